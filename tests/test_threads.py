"""The CPUs dlrm may use, and the governor that picks torch's thread count by timing training steps."""

from __future__ import annotations

import types

import pytest

from dlrm_cli.runtime import threads
from dlrm_cli.runtime.threads import ThreadGovernor, available_cpus, candidates, cgroup_quota, chosen_threads


def test_available_cpus_follow_the_affinity_mask_and_the_cgroup_quota(monkeypatch, tmp_path):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    no_quota = tmp_path / "none"
    assert available_cpus(no_quota) == 4
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # docker --cpus 1.5
    assert cgroup_quota(quota) == 1.5
    assert available_cpus(quota) == 2
    quota.write_text("max 100000\n")
    assert cgroup_quota(quota) is None and available_cpus(quota) == 4
    quota.write_text("garbage")
    assert cgroup_quota(quota) is None
    quota.write_text("50000 100000")  # half a CPU still runs one thread
    assert available_cpus(quota) == 1


def test_the_users_thread_count_wins():
    assert chosen_threads(3, {"OMP_NUM_THREADS": "2"}) == 3
    assert chosen_threads(None, {"OMP_NUM_THREADS": "2"}) == 2
    assert chosen_threads(None, {"OMP_NUM_THREADS": "zero"}) is None
    assert chosen_threads(None, {"OMP_NUM_THREADS": "0"}) is None
    assert chosen_threads(None, {}) is None


def test_candidates_double_up_to_the_cpus():
    assert candidates(1) == [1]
    assert candidates(2) == [1, 2]
    assert candidates(6) == [1, 2, 4, 6]
    assert candidates(8) == [1, 2, 4, 8]


class Machine:
    """A fake clock, and work whose cost depends on the thread count and on what else runs."""

    def __init__(self, cost):
        self.now, self.cost, self.threads, self.steps, self.probes = 0.0, cost, 1, [], []

    def set_threads(self, n: int) -> None:
        self.threads = n

    def clock(self) -> float:
        return self.now

    def probe(self) -> None:
        self.probes.append(self.threads)
        self.now += self.cost(self.threads)

    def step(self) -> None:
        self.steps.append(self.threads)
        self.now += self.cost(self.threads)

    def run(self, governor: ThreadGovernor, steps: int) -> None:
        for _ in range(steps):
            governor.timed(self.step, samples=100)


def governed(machine: Machine, most: int = 2) -> ThreadGovernor:
    return ThreadGovernor(most, machine.set_threads, probe=machine.probe, clock=machine.clock, hold_seconds=5.0)


def test_alone_it_keeps_every_cpu_and_never_trains_at_another_count():
    machine = Machine(lambda n: 0.010 / n**0.8)  # two threads are faster
    governor = governed(machine)
    assert governor.settled and governor.choice == 2 and machine.threads == 2
    machine.run(governor, 20)
    assert machine.steps == [2] * 20  # trials time the probe, never a training step
    assert set(machine.probes) == {1, 2}


def test_beside_a_busy_process_it_drops_to_one_thread_after_one_slow_probe():
    machine = Machine(lambda n: 0.010 if n == 1 else 0.600)  # spinning threads collapse beside another job
    governor = governed(machine)
    assert governor.choice == 1 and machine.threads == 1
    # at two threads: one run that pays for the switch, one timed run, then it gave up
    assert machine.probes.count(2) == 2


def test_it_measures_again_when_step_times_drift():
    busy = {"other job": False}
    machine = Machine(lambda n: (0.010 if n == 1 else 0.600) if busy["other job"] else 0.010 / n)
    governor = governed(machine)
    machine.run(governor, 20)
    assert governor.choice == 2 and governor.trials == 1
    busy["other job"] = True  # another process starts: two threads become slow
    machine.run(governor, 5)
    assert governor.trials == 2 and machine.threads == 1
    busy["other job"] = False  # it ends: the next trial, when due, goes back to two threads
    machine.run(governor, 2000)
    assert governor.choice == 2 and machine.threads == 2


def test_it_checks_again_less_often_while_the_answer_stays_the_same():
    machine = Machine(lambda n: 0.010 / n)
    governor = governed(machine)
    holds = [governor._hold]
    for _ in range(5):
        trials = governor.trials
        while governor.trials == trials:
            machine.run(governor, 1)
        holds.append(governor._hold)
    assert holds == [5.0, 10.0, 20.0, 40.0, 40.0, 40.0]


def test_it_times_the_counts_in_turns():
    machine = Machine(lambda n: 0.010 / n)
    governed(machine)
    # each turn: a run that pays for the switch, then a timed one; so a neighbour's burst hits every count
    assert machine.probes == [1, 1, 2, 2] * 3


def test_two_threads_must_be_clearly_faster_than_one():
    # beside a neighbour whose two threads spin, each run's two threads are only 1.3x faster than one: both
    # runs keeping two threads is the collapse, so one thread it is
    machine = Machine(lambda n: 0.0079 if n == 1 else 0.0060)
    assert governed(machine).choice == 1
    machine = Machine(lambda n: 0.0039 if n == 1 else 0.0020)  # alone here: 1.95x
    assert governed(machine).choice == 2


@pytest.mark.parametrize(
    ("seconds", "choice"),
    [
        ({1: 0.0100, 2: 0.0052, 4: 0.0040}, 2),  # four are fastest, but only 1.3x faster than two
        ({1: 0.0100, 2: 0.0052, 4: 0.0027}, 4),  # each doubling 1.9x faster
        ({1: 0.0100, 2: 0.0080, 4: 0.0032}, 4),  # two lose (1.25x), four against one: 3.1x, of the 3x asked
        ({1: 0.0100, 2: 0.0080, 4: 0.0035}, 1),  # four against one: 2.9x, short of it
    ],
)
def test_more_threads_must_be_clearly_faster_than_the_count_kept_so_far(seconds, choice):
    machine = Machine(lambda n: seconds[n])
    governor = governed(machine, most=4)
    assert governor.candidates == [1, 2, 4]
    assert governor.choice == choice and machine.threads == choice


def test_one_lucky_run_of_two_threads_does_not_win():
    runs = iter([0.004, 0.002, 0.004, 0.006, 0.004, 0.002] * 2)  # 1, 2, 1, 2, 1, 2 (and their switch runs)
    machine = Machine(lambda n: next(runs))
    governor = ThreadGovernor(2, machine.set_threads, probe=machine.probe, clock=machine.clock)
    assert governor.choice == 1  # a slow run of two threads: a neighbour's work, which longer steps would meet


def test_a_passing_burst_does_not_set_off_a_trial_but_a_lasting_change_does():
    slow = {"now": False}
    machine = Machine(lambda n: (0.040 if slow["now"] else 0.010) / n)
    governor = governed(machine)
    machine.run(governor, 20)
    slow["now"] = True  # a neighbour's trial: a few steps, well under settle_seconds
    machine.run(governor, 8)
    slow["now"] = False
    machine.run(governor, 20)
    assert governor.trials == 1
    slow["now"] = True  # it lasts
    machine.run(governor, 40)
    assert governor.trials == 2


def test_the_wait_before_the_next_trial_starts_with_the_steps():
    machine = Machine(lambda n: 0.010 / n)
    governor = ThreadGovernor(2, machine.set_threads, probe=machine.probe, clock=machine.clock, hold_seconds=1.0)
    machine.now += 30.0  # the first trial ran before the data was loaded
    machine.run(governor, 50)  # 0.25 s of steps
    assert governor.trials == 1
    machine.run(governor, 400)  # past a second of steps: check again, where the steps now run
    assert governor.trials == 2


def test_one_cpu_needs_no_trials():
    machine = Machine(lambda n: 0.010)
    governor = governed(machine, most=1)
    machine.run(governor, 50)
    assert governor.settled and governor.trials == 0 and set(machine.steps) == {1} and not machine.probes


def test_a_governor_needs_a_cpu():
    with pytest.raises(ValueError, match="most must be >= 1, got 0"):
        ThreadGovernor(0, lambda _: None)


def test_scoring_keeps_freed_memory_unless_the_user_set_the_allocator(monkeypatch):
    from dlrm_cli.runtime import memory

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    calls = []

    def mallopt(option, value):
        calls.append((option, value))
        return 1

    monkeypatch.setattr(memory.ctypes, "CDLL", lambda name: types.SimpleNamespace(mallopt=mallopt))
    monkeypatch.setattr(memory.sys, "platform", "linux")
    assert memory.keep_freed_memory() is True
    assert calls == [(memory.M_MMAP_THRESHOLD, 32 << 20), (memory.M_TRIM_THRESHOLD, 1 << 30)]
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert memory.keep_freed_memory() is False and len(calls) == 2  # the user's setting stands


def test_one_thread_runs_a_block_on_one_thread_and_restores_the_count_even_after_an_error():
    import torch

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with threads.one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), threads.one_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
