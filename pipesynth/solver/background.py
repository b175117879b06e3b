"""Slow schedule builders in a child process, collected by a deadline.

Handcrafted generators and the building-block reorder portfolio can take tens
of seconds on large problems. Running them in a child process lets the block
search use the time meanwhile, and lets `solve` keep its time limit: what has
not arrived by the deadline is dropped and the child is killed.

The child is `python -m pipesynth.solver.background` fed pickled jobs on
stdin (not multiprocessing, which would re-import the caller's script), and
it answers one length-prefixed pickle per job on stdout.
"""

from __future__ import annotations

import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

Job = tuple[Callable[..., Any], tuple[Any, ...]]
_HEADER = struct.Struct("!Q")


def _write(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read(stream: BinaryIO) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    return pickle.loads(stream.read(_HEADER.unpack(head)[0]))


class Background:
    """Run `jobs` (module-level functions and their arguments) one after another in a child.

    `inline` runs them here and now instead, to the end, whatever the
    deadline: the deterministic mode needs the same hints on every run.
    """

    def __init__(self, jobs: list[Job], inline: bool = False):
        self.jobs = jobs
        self.results: dict[int, Any] = {}
        self.inbox: queue.Queue = queue.Queue()
        self.child: subprocess.Popen | None = None
        if inline:
            self.results = dict(enumerate(_run(fn, args) for fn, args in jobs))
            return
        if not jobs:
            return
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        self.child = subprocess.Popen(
            [sys.executable, "-m", "pipesynth.solver.background"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        _write(self.child.stdin, jobs)
        self.child.stdin.close()
        threading.Thread(target=self._listen, args=(self.child.stdout,), daemon=True).start()

    def _listen(self, stream: BinaryIO) -> None:
        try:
            while True:
                self.inbox.put(_read(stream))
        except (EOFError, OSError, pickle.UnpicklingError):
            self.inbox.put(None)

    def collect(self, deadline: float | None, stop: threading.Event | None = None) -> list[Any]:
        """One entry per job: its result, or None if it failed or missed `deadline` (time.monotonic(), or None
        to wait for every job) or `stop` was set first."""
        while self.child is not None and len(self.results) < len(self.jobs) and not (stop and stop.is_set()):
            wait = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                item = self.inbox.get(timeout=wait)
            except queue.Empty:
                continue
            if item is None:  # the child ended
                break
            self.results[item[0]] = item[1]
        self.close()
        return [self.results.get(i) for i in range(len(self.jobs))]

    def close(self) -> None:
        if self.child is not None:
            if self.child.poll() is None:
                self.child.kill()
            self.child.wait()
            self.child.stdout.close()
        self.child = None


def _run(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        return fn(*args)
    except Exception:  # noqa: BLE001 - a failed builder just offers nothing
        return None


def main() -> None:
    jobs: list[Job] = _read(sys.stdin.buffer)
    for i, (fn, args) in enumerate(jobs):
        _write(sys.stdout.buffer, (i, _run(fn, args)))


if __name__ == "__main__":
    main()
