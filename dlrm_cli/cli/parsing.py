"""Parsing of option values that must not pull in torch (usage errors answer at once)."""

from __future__ import annotations

from pathlib import Path

from dlrm_cli.errors import DlrmUsageError


def parse_id_list(text: str, option: str) -> list[str]:
    """``101,102,103`` -> ['101', '102', '103']; empty entries and repeats are usage errors."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise DlrmUsageError(f"{option} must be a comma-separated list of ids with no empty entries, got {text!r}")
    seen: set[str] = set()
    for part in parts:
        if part in seen:
            raise DlrmUsageError(f"{option} lists {part!r} more than once")
        seen.add(part)
    return parts


MAX_ID_FILE_BYTES = 256 * 1024 * 1024


def read_id_list(text: str, option: str) -> list[str]:
    """``parse_id_list``, or with ``@FILE`` the ids in that file, one per line or comma-separated (a list
    too long for the shell's argument limit); ``@-`` reads them from standard input."""
    if not text.startswith("@"):
        return parse_id_list(text, option)
    source = text[1:]
    try:
        if source == "-":
            import sys

            content = sys.stdin.read(MAX_ID_FILE_BYTES + 1)
        else:
            path = Path(source)
            if path.is_dir():
                raise DlrmUsageError(f"{option} {text}: {path} is a folder; give a file of ids")
            with path.open(encoding="utf-8") as handle:
                content = handle.read(MAX_ID_FILE_BYTES + 1)
    except FileNotFoundError:
        raise DlrmUsageError(f"{option} {text}: no such file") from None
    except UnicodeDecodeError:
        raise DlrmUsageError(f"{option} {text}: not utf-8 text") from None
    except OSError as error:
        raise DlrmUsageError(f"{option} {text}: cannot read it ({error.strerror})") from None
    if len(content) > MAX_ID_FILE_BYTES:
        raise DlrmUsageError(f"{option} {text}: larger than {MAX_ID_FILE_BYTES >> 20} MB")
    ids = [part for line in content.splitlines() for part in line.split(",")]
    ids = [part for part in ids if part.strip()]  # blank lines and a trailing comma are fine in a file
    if not ids:
        raise DlrmUsageError(f"{option} {text}: the file holds no ids")
    return parse_id_list(",".join(ids), option)


def _positive_whole_numbers(text: str) -> tuple[int, ...] | None:
    """``5,10`` -> (5, 10); None unless there is at least one and each is a whole number >= 1."""
    try:
        numbers = tuple(int(part) for part in text.split(",")) if text.strip() else ()
    except ValueError:
        return None
    return numbers if numbers and min(numbers) >= 1 else None


def parse_cutoffs(text: str) -> tuple[int, ...]:
    """``--k 5,10,20`` -> (5, 10, 20): ranking cut-offs, each a positive whole number."""
    cutoffs = _positive_whole_numbers(text)
    if cutoffs is None:
        raise DlrmUsageError(f"--k must be comma-separated positive whole numbers such as 5,10,20, got {text!r}")
    return cutoffs


def parse_sizes(text: str, option: str) -> tuple[int, ...]:
    """``512,256`` -> (512, 256): layer sizes, each a positive whole number."""
    sizes = _positive_whole_numbers(text)
    if sizes is None:
        raise DlrmUsageError(f"{option} must be comma-separated positive layer sizes such as 512,256, got {text!r}")
    return sizes


def parse_rating_range(text: str) -> tuple[float, float]:
    """``1,5`` -> (1.0, 5.0): a declared rating scale, LOW below HIGH."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise DlrmUsageError(f"--rating-range must be LOW,HIGH, got {text!r}") from None
    if not low < high:
        raise DlrmUsageError(f"--rating-range must have LOW below HIGH, got {text!r}")
    return low, high


def parse_user(text: str) -> str:
    """A user id as typed: surrounding spaces dropped, empty refused."""
    user = text.strip()
    if not user:
        raise DlrmUsageError("--user must not be empty")
    return user


def parse_table_output(output: Path, force: bool) -> Path:
    """``--output recs.csv`` (or ``.parquet``, which needs pyarrow): a table file dlrm may write."""
    from dlrm_cli.runtime.files import output_path

    if output.suffix.lower() not in (".csv", ".parquet"):
        raise DlrmUsageError(f"--output must end in .csv or .parquet, got {output.name!r}")
    if output.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DlrmUsageError("writing .parquet needs pyarrow: pip install 'dlrm-cli[parquet]'") from None
    return output_path(output, force)
