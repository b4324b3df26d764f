"""How many CPU threads torch uses for training, and who decides.

The CPUs a process may use are its affinity mask (``taskset``, cgroups' cpusets), capped by a cgroup CPU
quota (``docker --cpus``): ``available_cpus``. That is torch's thread count unless the user fixed one
(``--threads``, or ``OMP_NUM_THREADS``).

Why measure instead of fixing a number: torch's OpenMP threads spin between parallel regions. Alone, that
spinning is what makes two threads fast (on the 2-core machine here, turning it off with
``OMP_WAIT_POLICY=PASSIVE`` halves a training run's speed at batch 256: each wake-up costs more than the
work between them). Beside another busy process it is a disaster: a thread spins on a barrier while its
partner waits for a core, and two training runs side by side did 0.02x the work of one alone. No fixed
setting is right in both cases, so ``ThreadGovernor`` times a small probe of matrix products at each
thread count in ``1, 2, 4, ..., available`` and keeps the fewest threads that more would not clearly beat:
more threads must do the probe at least ``min_efficiency`` (75%) of proportionally faster (1.5x for twice
the threads). Alone, two threads do it 1.95x faster here; beside another run whose threads spin, 1.3x
or worse, and two runs that each settled on two threads (their first trials ran before the other had
started) would otherwise each keep confirming that choice. The counts are timed in turns (1, 2, 1, 2, ...),
so that a neighbour's passing burst of work, such as its own trial, falls on all of them alike; more
threads are judged by their slowest run, one thread by its median.

It watches the training steps, and tries again when their times have drifted for ``settle_seconds`` (half
a second: a neighbour's trial, a few tens of milliseconds, does not set off one here), or when a while of
steps has passed since the last trial (a second, doubling each time the same count wins, up to
``max_hold_seconds``): the first trial often runs before the steps do, while a neighbour is still loading
its data. A count above one thread that is clearly losing (more than twice the best time so far) is given
up after one run of the probe. Trials never run training steps, so a run alone computes exactly what it
would at a fixed count.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = cgroup_quota(cpu_max)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_quota(cpu_max: Path = CGROUP_CPU_MAX) -> float | None:
    """The cgroup v2 quota in CPUs (``"200000 100000"`` is 2.0), or None when there is none."""
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return int(fields[0]) / int(fields[1])
    except (ValueError, ZeroDivisionError):
        return None


def chosen_threads(requested: int | None, environ: dict[str, str] | None = None) -> int | None:
    """The thread count the user fixed (``--threads``, else a valid ``OMP_NUM_THREADS``), or None when
    dlrm may choose."""
    if requested:
        return requested
    value = (os.environ if environ is None else environ).get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def take_charge(requested: int | None) -> ThreadGovernor | None:
    """Apply the thread count the user fixed and return None, or return a governor that picks it."""
    import torch

    fixed = chosen_threads(requested)
    if fixed:
        torch.set_num_threads(fixed)
        return None
    return ThreadGovernor(available_cpus(), torch.set_num_threads)  # its first trial runs here


@contextmanager
def one_thread() -> Iterator[None]:
    """Run a block on one of torch's threads, then go back to the count in force: for the few ops whose
    parallel path is slower than their serial one at the sizes training gives them."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def candidates(most: int) -> list[int]:
    """Thread counts worth trying: 1, 2, 4, ... and ``most``."""
    counts, n = [], 1
    while n < most:
        counts.append(n)
        n *= 2
    return [*counts, most]


def matmul_probe() -> Callable[[], None]:
    """A stand-in for a training step's parallel work: a few products of MLP-sized matrices. Trials time
    this, not training steps, so that a run alone computes exactly what it would at a fixed count."""
    import torch

    left, right = torch.randn(256, 512), torch.randn(512, 256)

    def run() -> None:
        for _ in range(6):
            torch.mm(left, right)

    return run


class ThreadGovernor:
    """Picks torch's thread count by timing a probe at each candidate count, and watches the steps it is
    told about for a change that calls for another trial.

    Example::

        governor = ThreadGovernor(available_cpus(), torch.set_num_threads)
        for batch in batches:
            governor.timed(lambda: train_step(...), samples=len(batch))

    ``set_threads``, ``probe`` and ``clock`` are injectable, so that tests can drive it with made-up timings.
    """

    def __init__(
        self,
        most: int,
        set_threads: Callable[[int], None],
        probe: Callable[[], object] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        probe_repeats: int = 3,
        watch_steps: int = 5,
        hold_seconds: float = 1.0,
        max_hold_seconds: float = 40.0,
        drift: float = 1.5,
        give_up: float = 2.0,
        min_efficiency: float = 0.75,
        settle_seconds: float = 0.5,
    ) -> None:
        if most < 1:
            raise ValueError(f"most must be >= 1, got {most}")
        self.candidates = candidates(most)
        self._set_threads, self._clock = set_threads, clock
        self._probe = probe
        self.probe_repeats, self.drift, self.give_up = probe_repeats, drift, give_up
        self.min_efficiency, self.settle_seconds = min_efficiency, settle_seconds
        self._base_hold, self._max_hold = hold_seconds, max_hold_seconds
        self._hold = hold_seconds
        self.threads = 0
        self.choice: int | None = None  # the count that won the last trial
        self.trials = 0
        self._recent: deque[float] = deque(maxlen=watch_steps)
        self._reference: float | None = None  # seconds per sample of the steps after the last trial
        self._until = math.inf
        self._drifting_since: float | None = None  # when the steps' times first drifted from the reference
        if len(self.candidates) == 1:
            self._use(most)
            self.choice = most
        else:
            self.trial()

    @property
    def settled(self) -> bool:
        """True once a trial has picked a count."""
        return self.choice is not None

    def timed(self, run: Callable[[], object], samples: int) -> object:
        """Run one step, time it, and return what it returned."""
        start = self._clock()
        result = run()
        self.observe(self._clock() - start, samples)
        return result

    def observe(self, seconds: float, samples: int) -> None:
        """Take the time of one step of ``samples`` samples; start a trial when it is due."""
        if len(self.candidates) == 1:  # nothing to choose between
            return
        self._recent.append(seconds / max(samples, 1))
        if len(self._recent) < (self._recent.maxlen or 1):
            return
        typical = statistics.median(self._recent)
        now = self._clock()
        if self._reference is None:  # the steps right after a trial set what normal looks like
            self._reference = typical
            self._until = now + self._hold  # the while before the next trial starts with the steps
            return
        if typical > self.drift * self._reference or typical * self.drift < self._reference:
            if self._drifting_since is None:
                self._drifting_since = now
            elif now - self._drifting_since >= self.settle_seconds:
                self._hold = self._base_hold  # conditions changed, and stayed changed: measure again now
                self.trial()
            return
        self._drifting_since = None
        if now >= self._until:
            self.trial()

    def trial(self) -> int:
        """Time the probe at each candidate count, in turns (a clearly losing count after one run), and keep
        the fewest threads that more do not clearly beat (see the module's docstring); returns that count."""
        self.trials += 1
        probe = self._probe or matmul_probe()
        self._probe = probe
        fewest = self.candidates[0]
        times: dict[int, list[float]] = {count: [] for count in self.candidates}
        for _ in range(self.probe_repeats):
            for count, runs in times.items():
                best = min((min(other) for other in times.values() if other), default=math.inf)
                if count != fewest and runs and runs[-1] > self.give_up * best:
                    continue  # clearly losing (spinning threads): given up; one thread costs little to time
                self._use(count)
                probe()  # the first run at a new count pays for the switch
                start = self._clock()
                probe()
                runs.append(self._clock() - start)
        # More threads are judged by their slowest run: a probe lasts milliseconds, and one of them can fall in
        # a gap of a neighbour's work that the steps, much longer, would not find.
        results = {count: statistics.median(runs) if count == fewest else max(runs) for count, runs in times.items()}
        winner = fewest
        for count in self.candidates[1:]:
            if results[winner] / results[count] >= self.min_efficiency * count / winner:
                winner = count
        self._hold = min(2 * self._hold, self._max_hold) if winner == self.choice else self._base_hold
        self.choice = winner
        self._use(winner)
        self._recent.clear()
        self._reference = None
        self._drifting_since = None
        self._until = math.inf  # set when the steps after this trial have been timed
        return winner

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self._set_threads(threads)
            self.threads = threads
