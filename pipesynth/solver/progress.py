"""Solver settings shared by every CP-SAT model, and progress reporting.

`SolverParams` turns the user's knobs (workers, seed, deterministic mode) into
CP-SAT parameters once; `Progress` is any callable taking a `ProgressEvent`,
so the CLI prints them and a launcher can log them or ignore them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ortools.sat.python import cp_model


@dataclass(frozen=True)
class ProgressEvent:
    """One line of news: the phase, what it says, and figures when it has them."""

    phase: str
    message: str
    elapsed: float
    makespan: float | None = None
    bound: float | None = None

    @property
    def gap(self) -> float | None:
        if self.makespan is None or self.bound is None or self.makespan <= 0:
            return None
        return max(0.0, (self.makespan - self.bound) / self.makespan)

    def __str__(self) -> str:
        text = f"[{self.elapsed:6.1f}s] {self.phase}: {self.message}"
        if self.makespan is not None:
            text += f" | best {self.makespan:g}"
        if self.bound is not None:
            text += f" bound {self.bound:g}"
        if self.gap is not None:
            text += f" gap {100 * self.gap:.1f}%"
        return text


Progress = Callable[[ProgressEvent], None]


def report(progress: Progress | None, phase: str, message: str, elapsed: float, **figures: float | None) -> None:
    if progress is not None:
        progress(ProgressEvent(phase, message, elapsed, **figures))


@dataclass
class SolverParams:
    """CP-SAT knobs. Deterministic mode: one worker, fixed seed, deterministic time.

    `stop` is set (e.g. by Ctrl-C) to end the current search early and keep
    the best schedule found so far.
    """

    workers: int = 2
    seed: int = 0
    deterministic: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    _running: list[cp_model.CpSolver] = field(default_factory=list, repr=False)
    _made: list[cp_model.CpSolver] = field(default_factory=list, repr=False)

    def request_stop(self) -> None:
        """End the search now (thread-safe): the best schedule so far is kept."""
        self.stop.set()
        for solver in list(self._running):
            solver.stop_search()

    def solver(self, time_limit: float) -> cp_model.CpSolver:
        """A CP-SAT solver with these settings, stoppable by `request_stop`."""
        solver = cp_model.CpSolver()
        # Searches may run side by side (params from `shared`): keep the latest few, so a stop reaches each.
        self._running.append(solver)
        del self._running[:-4]
        if self.deterministic:
            self._made.append(solver)  # its deterministic time is this search's clock
        prm = solver.parameters
        prm.random_seed = self.seed
        prm.catch_sigint_signal = False
        if self.deterministic:
            # Wall-clock limits make runs depend on machine load: limit deterministic time instead.
            prm.num_workers = 1
            prm.max_deterministic_time = max(0.01, time_limit)
            prm.max_time_in_seconds = 10 * max(1.0, time_limit)
        else:
            prm.num_workers = max(1, self.workers)
            prm.max_time_in_seconds = max(0.01, time_limit)
        if self.stopped:
            prm.max_time_in_seconds = 0.0
        return solver

    def shared(self, workers: int) -> SolverParams:
        """These settings with `workers` threads, for a search run beside others: one stop ends them all."""
        return replace(self, workers=workers)

    def now(self) -> float:
        """The clock budgets are measured on: in deterministic mode, the CP-SAT deterministic time
        spent so far (so machine load cannot change a run), else wall time."""
        if not self.deterministic:
            return time.monotonic()
        spent = 0.0
        for solver in self._made:
            with contextlib.suppress(RuntimeError):  # made, not yet solved
                spent += solver.deterministic_time
        return spent

    @property
    def stopped(self) -> bool:
        return self.stop.is_set()
