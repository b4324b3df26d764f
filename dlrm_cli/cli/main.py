"""The ``dlrm`` command: wires the subcommands together and turns expected failures into one line.

Nothing here imports torch, so ``dlrm --help`` and usage errors answer at once.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from dlrm_cli.cli.commands import (
    benchmark,
    checkpoints,
    doctor,
    evaluate,
    export,
    predict,
    recommend,
    report,
    serve,
    train,
)
from dlrm_cli.errors import OUT_OF_MEMORY, DlrmError, interrupt_code, signal_name
from dlrm_cli.training import signals


class OneLineErrors(TyperGroup):
    """Report usage errors and DlrmErrors as a single ``Error: ...`` line with the documented exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except DlrmError as error:
            _fail(str(error), error.exit_code)
        except (typer.Abort, KeyboardInterrupt) as stop:
            code = interrupt_code(stop)
            _fail(f"interrupted by {signal_name(code - 128)}", code)
        except MemoryError:
            _fail(OUT_OF_MEMORY, 1)
        except Exception as error:
            if not _is_click_error(error):
                raise
            if type(error).__name__ == "NoArgsIsHelpError":  # plain ``dlrm``: the help, and success
                typer.echo(error.format_message())
                sys.exit(0)
            ctx = getattr(error, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(f"{error.format_message()}{hint}", error.exit_code)
        code = result if isinstance(result, int) else 0
        signals.done(code)
        sys.exit(code)


def _is_click_error(error: Exception) -> bool:
    """A usage error raised by Click inside Typer. Typer keeps its copy of Click in a private module, so its
    exceptions are recognised by what every one of them has (as Typer's own error printer does), not by
    importing that module: a formatted message and an exit code (``typer.TyperException``'s interface)."""
    return callable(getattr(error, "format_message", None)) and isinstance(getattr(error, "exit_code", None), int)


def _fail(message: str, code: int) -> None:
    signals.stopping()  # a signal now would cut the line short or print a traceback after it
    message = " ".join(message.split())  # one line, whatever the message held
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    signals.done(code)
    sys.exit(code)


app = typer.Typer(
    cls=OneLineErrors,
    name="dlrm",
    help="Train, evaluate, query and export a TorchRec DLRM that predicts ratings.",
    epilog="Example: dlrm train --epochs 10 && dlrm predict --user 42 --items 101,102",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("train", epilog=train.EXAMPLE)(train.train_command)
app.command("evaluate", epilog=evaluate.EXAMPLE)(evaluate.evaluate_command)
app.command("predict", epilog=predict.EXAMPLE)(predict.predict_command)
app.command("recommend", epilog=recommend.EXAMPLE)(recommend.recommend_command)
app.command("export", epilog=export.EXAMPLE)(export.export_command)
app.command("serve", epilog=serve.EXAMPLE)(serve.serve_command)
app.command("report", epilog=report.EXAMPLE)(report.report_command)
app.command("doctor", epilog=doctor.EXAMPLE)(doctor.doctor_command)
app.command("benchmark", epilog=benchmark.EXAMPLE)(benchmark.benchmark_command)
app.add_typer(checkpoints.app, name="checkpoints")


def main() -> None:
    """``dlrm`` in a process of its own: SIGINT and SIGTERM stop it with one line and 128 + the signal,
    after the clean-ups (a half-written file is removed); see ``dlrm_cli.training.signals``."""
    signals.install()
    typer.main.get_command(app).main(prog_name="dlrm")
