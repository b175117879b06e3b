"""Bound stream-ordered P2P waits: a thread that ends the process when one never completes.

On NCCL, `work.wait()` only makes the current CUDA stream wait for the
transfer; the host goes on queueing passes. A transfer that never completes
then hangs the host later, inside a CUDA call (a synchronize, `.item()`),
where no Python timeout can reach it. The executor registers each such wait
here; a daemon thread polls `is_completed()` and, past the deadline, reports
the op and ends the process (the default `exit_process`), so a hung peer
stops every rank (`launch()` sees the exit) instead of hanging them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class Completable(Protocol):
    """What the watchdog needs of a `dist.Work` (and all a test's fake provides)."""

    def is_completed(self) -> bool: ...


# Set by launch() in each rank: the file its root-cause report reads for this rank's error.
ERROR_FILE_VARIABLE = "PIPESYNTH_RANK_ERROR_FILE"


def exit_process(message: str) -> None:
    """Report `message` on stderr (and to launch(), see ERROR_FILE_VARIABLE); end the process, exit code 1.

    Raising would not help: this runs on the watchdog thread, while the main
    thread may be blocked inside CUDA/NCCL and never return to Python.
    `os._exit` skips interpreter clean-up, which could block on the same
    hung transfer (process-group teardown, CUDA context destruction).
    """
    sys.stdout.flush()
    print(f"PipelineTimeoutError (watchdog): {message}", file=sys.stderr, flush=True)
    error_file = os.environ.get(ERROR_FILE_VARIABLE)
    if error_file:
        Path(error_file).write_text(f"PipelineTimeoutError: {message}\n")
    os._exit(1)


@dataclass(frozen=True)
class WatchedOp:
    """One waited-on op and what to say if it does not complete by `deadline` (time.monotonic)."""

    work: Completable
    action: str
    peer: int
    doing: str
    deadline: float


@dataclass
class Watchdog:
    """Per-executor watchdog: `watch` ops after waiting on them; `stop` ends the thread.

    The thread starts with the first `watch` (a gloo executor never starts
    one) and checks the outstanding ops every `interval` seconds: completed
    ops are dropped; one past its deadline is dropped and reported once
    through `on_timeout("rank R, <action>: <doing> with rank P timed out after T s")`.
    """

    rank: int
    timeout: float
    on_timeout: Callable[[str], None] = exit_process
    interval: float = 0.05
    _ops: list[WatchedOp] = field(default_factory=list, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def watch(self, work: Completable, action: str, peer: int, doing: str) -> None:
        """Expect `work` to complete within `timeout` seconds from now."""
        op = WatchedOp(work, action, peer, doing, time.monotonic() + self.timeout)
        with self._lock:
            self._ops.append(op)
            if self._thread is None and not self._stopped.is_set():
                self._thread = threading.Thread(target=self._run, name=f"pipesynth-watchdog-{self.rank}", daemon=True)
                self._thread.start()

    @property
    def outstanding(self) -> int:
        """How many watched ops have not completed (nor timed out) yet."""
        with self._lock:
            return len(self._ops)

    def stop(self) -> None:
        """End the thread (waits for it); ops still outstanding are no longer watched."""
        self._stopped.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            for op in self._poll():
                self.on_timeout(
                    f"rank {self.rank}, {op.action}: {op.doing} with rank {op.peer} timed out after {self.timeout:g} s"
                )

    def _poll(self) -> list[WatchedOp]:
        """Drop completed and overdue ops; return the overdue ones."""
        now = time.monotonic()
        with self._lock:
            pending = [op for op in self._ops if not _completed(op.work)]
            self._ops = [op for op in pending if now <= op.deadline]
        return [op for op in pending if now > op.deadline]


def _completed(work: Completable) -> bool:
    """is_completed(), where an error counts as not completed: it then ends in a report, not in silence."""
    try:
        return work.is_completed()
    except Exception:
        return False
