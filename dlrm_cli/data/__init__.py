"""Where ratings come from. ``--data`` names a source as ``KIND[:PATH]``; every source yields a Dataset."""

from __future__ import annotations

from typing import Any

from dlrm_cli.errors import DlrmUsageError

DATA_KINDS = ("synthetic",)


def parse_data_option(text: str) -> dict[str, Any]:
    """Turn ``--data`` into a source description that is saved in the checkpoint."""
    kind, _, path = text.partition(":")
    if kind not in DATA_KINDS:
        raise DlrmUsageError(f"--data must be one of {', '.join(DATA_KINDS)}, got {text!r}")
    if kind == "synthetic":
        if path:
            raise DlrmUsageError("--data synthetic takes no path")
        return {"kind": "synthetic"}
    raise AssertionError(kind)


def load_dataset(source: dict[str, Any]):  # -> Dataset, imported lazily to keep torch off the CLI path
    """Build (or rebuild, from a checkpoint's record) the data set a source describes."""
    if source["kind"] == "synthetic":
        from dlrm_cli.data.synthetic import SyntheticSpec, generate

        fields = {key: value for key, value in source.items() if key != "kind"}
        try:
            spec = SyntheticSpec(**fields)
        except ValueError as error:
            raise DlrmUsageError(str(error)) from None
        return generate(spec)
    raise DlrmUsageError(f"unknown data kind {source['kind']!r}")
