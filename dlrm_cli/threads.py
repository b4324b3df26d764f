"""How many CPU threads torch uses for training, and who decides.

The CPUs a process may use are its affinity mask (``taskset``, cgroups' cpusets), capped by a cgroup CPU
quota (``docker --cpus``): ``available_cpus``. That is torch's thread count unless the user fixed one
(``--threads``, or ``OMP_NUM_THREADS``).

Why measure instead of fixing a number: torch's OpenMP threads spin between parallel regions. Alone, that
spinning is what makes two threads fast (on the 2-core machine here, turning it off with
``OMP_WAIT_POLICY=PASSIVE`` halves a training run's speed at batch 256: each wake-up costs more than the
work between them). Beside another busy process it is a disaster: a thread spins on a barrier while its
partner waits for a core, and two training runs side by side did 0.02x the work of one alone. No fixed
setting is right in both cases, so ``ThreadGovernor`` times the training steps with each thread count in
``1, 2, 4, ..., available`` and keeps the fastest; it measures again when step times drift, or when a
while has passed (doubling the while each time the same count wins, up to ``max_hold_seconds``).
A trial that is clearly losing (more than twice the best time so far) stops after one step.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from collections.abc import Callable
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


def candidates(most: int) -> list[int]:
    """Thread counts worth trying: 1, 2, 4, ... and ``most``."""
    counts, n = [], 1
    while n < most:
        counts.append(n)
        n *= 2
    return [*counts, most]


class ThreadGovernor:
    """Picks torch's thread count from the measured time of the steps it is told about.

    Example::

        governor = ThreadGovernor(available_cpus(), torch.set_num_threads)
        for batch in batches:
            governor.timed(lambda: train_step(...), samples=len(batch))

    ``set_threads`` and ``clock`` are injectable, so that tests can drive it with made-up timings.
    """

    def __init__(
        self,
        most: int,
        set_threads: Callable[[int], None],
        clock: Callable[[], float] = time.perf_counter,
        probe_steps: int = 5,
        hold_seconds: float = 5.0,
        max_hold_seconds: float = 40.0,
        drift: float = 1.5,
        give_up: float = 2.0,
    ) -> None:
        if most < 1:
            raise ValueError(f"most must be >= 1, got {most}")
        self.candidates = candidates(most)
        self._set_threads, self._clock = set_threads, clock
        self.probe_steps, self.drift, self.give_up = probe_steps, drift, give_up
        self._base_hold, self._max_hold = hold_seconds, max_hold_seconds
        self._hold = hold_seconds
        self.threads = 0
        self.choice: int | None = None  # the count that won the last trial
        self.trials = 0
        self._recent: deque[float] = deque(maxlen=probe_steps)
        self._results: dict[int, float] = {}
        self._times: list[float] = []
        self._probing: int | None = None  # index into candidates while a trial runs
        self._reference = math.inf
        self._until = math.inf
        self._skip = 0
        if len(self.candidates) == 1:
            self._use(most, skip=0)
            self.choice = most
        else:
            self._start_trial()

    @property
    def settled(self) -> bool:
        """True once a first trial has picked a count."""
        return self.choice is not None

    def timed(self, run: Callable[[], object], samples: int) -> object:
        """Run one step, time it, and return what it returned."""
        start = self._clock()
        result = run()
        self.observe(self._clock() - start, samples)
        return result

    def observe(self, seconds: float, samples: int) -> None:
        """Take the time of one step of ``samples`` samples, run at ``self.threads`` threads."""
        if len(self.candidates) == 1:  # nothing to choose between
            return
        if self._skip:  # the first step after a switch pays for the switch
            self._skip -= 1
            return
        per_sample = seconds / max(samples, 1)
        if self._probing is not None:
            self._trial_step(per_sample)
            return
        self._recent.append(per_sample)
        if len(self._recent) == self._recent.maxlen:
            typical = statistics.median(self._recent)
            if typical > self.drift * self._reference or typical * self.drift < self._reference:
                self._hold = self._base_hold  # conditions changed: measure again now
                self._start_trial()
                return
        if self._clock() >= self._until:
            self._start_trial()

    def _trial_step(self, per_sample: float) -> None:
        assert self._probing is not None
        self._times.append(per_sample)
        best = min(self._results.values(), default=math.inf)
        losing = per_sample > self.give_up * best
        if not losing and len(self._times) < self.probe_steps:
            return
        self._results[self.threads] = statistics.median(self._times)
        self._times = []
        if self._probing + 1 < len(self.candidates):
            self._probing += 1
            self._use(self.candidates[self._probing])
            return
        winner = min(self._results, key=self._results.__getitem__)
        self._hold = min(2 * self._hold, self._max_hold) if winner == self.choice else self._base_hold
        self.choice, self._reference, self._probing = winner, self._results[winner], None
        self._recent.clear()
        self._use(winner)
        self._until = self._clock() + self._hold

    def _start_trial(self) -> None:
        self.trials += 1
        self._results, self._times, self._probing = {}, [], 0
        self._use(self.candidates[0])

    def _use(self, threads: int, skip: int = 1) -> None:
        if threads != self.threads:
            self._set_threads(threads)
            self.threads = threads
            self._skip = skip
