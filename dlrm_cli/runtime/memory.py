"""How the C allocator hands memory back, for the commands that score; and a process's peak memory.

Scoring a batch allocates tensors of a few MB and frees them again, batch after batch. glibc's malloc
serves blocks above its mmap threshold (128 KiB at first) with fresh ``mmap`` calls, and trims the heap
whenever 128 KiB at its top are free, so each batch pays page faults for memory it just gave back.
Keeping that memory measured +70% evaluate throughput here (128-139k -> 221-231k ratings/s in
``dlrm benchmark``), and batch-10,000 latency 62 -> 44 ms. Training showed no gain (3% slower, within
noise), so ``dlrm train`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit systems
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed memory instead of returning it to the system at once: blocks up to 32 MiB
    come from the heap, and the heap is trimmed only when 1 GiB at its top is free. Does nothing off
    glibc, or when the user set ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_``. Returns whether
    the settings took."""
    if not sys.platform.startswith("linux") or any(
        name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


RANK_PEAK = "peak_gib_rank_"  # a distributed epoch's record: f"{RANK_PEAK}{rank}" is that rank's peak, in GiB


def rank_peaks(record: dict[str, float]) -> list[float]:
    """Each rank's peak resident GiB in an epoch's record, in rank order (none for a single process)."""
    peaks: list[float] = []
    while f"{RANK_PEAK}{len(peaks)}" in record:
        peaks.append(record[f"{RANK_PEAK}{len(peaks)}"])
    return peaks


def peak_resident_gib() -> float:
    """This process's peak resident memory so far, in GiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)
