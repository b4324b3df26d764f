"""Training options from the command line and a TOML file (``--config``), and back to TOML."""

from __future__ import annotations

import json
import tomllib
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from dlrm_cli.errors import DlrmUsageError

NOT_SETTINGS = ("config", "print_config", "resume")


def given_on_command_line(ctx: typer.Context) -> set[str]:
    """Options the user typed (or set through an environment variable), as opposed to defaults."""
    given = set()
    for name in ctx.params:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given.add(name)
    return given


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def effective_options(ctx: typer.Context, config: Path | None, presets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Defaults, overridden by the preset of the data's kind, by the TOML file, then by the command line."""
    options = {name: _plain(value) for name, value in ctx.params.items()}
    chosen = _from_toml(ctx, config, options) if config is not None else set()
    kind = str(options.get("data", "")).partition(":")[0]
    given = given_on_command_line(ctx) | chosen
    for key, value in presets.get(kind, {}).items():
        if key not in given:
            options[key] = value
    return options


def _from_toml(ctx: typer.Context, config: Path, options: dict[str, Any]) -> set[str]:
    """Apply the TOML file's settings that the command line does not override; returns the keys it set."""
    try:
        table = tomllib.loads(Path(config).read_text())
    except FileNotFoundError:
        raise DlrmUsageError(f"--config file {config} does not exist") from None
    except IsADirectoryError:
        raise DlrmUsageError(f"--config {config} is a folder, not a TOML file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DlrmUsageError(f"cannot read --config file {config}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise DlrmUsageError(f"--config file {config} is not valid TOML: {error}") from None
    params = {param.name: param for param in ctx.command.params}
    given = given_on_command_line(ctx)
    chosen = set()
    for raw_key, value in table.items():
        key = raw_key.replace("-", "_")
        if key not in params or key in NOT_SETTINGS:
            raise DlrmUsageError(f"{config}: unknown setting {raw_key!r}")
        if key in given:
            continue  # the command line wins
        try:  # the option's own conversion, range checks and callback, as on the command line
            options[key] = _plain(params[key].process_value(ctx, value))
        except Exception as error:  # Click's BadParameter, whose class Typer vendors
            message = getattr(error, "message", str(error))
            raise DlrmUsageError(f"{config}: {raw_key}: {message}") from None
        chosen.add(key)
    return chosen


def to_toml(options: dict[str, Any]) -> str:
    """The settings as a TOML document that ``--config`` reads back."""
    lines = ["# dlrm train settings (dlrm train --config FILE); unset options are left out"]
    for key, value in options.items():
        if key in NOT_SETTINGS or value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        lines.append(f"{key.replace('_', '-')} = {text}")
    return "\n".join(lines) + "\n"
