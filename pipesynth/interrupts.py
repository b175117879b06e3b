"""Stop signals as one exception: SIGINT, SIGTERM and SIGHUP raise `Interrupted` in the main thread.

Ctrl-C sends SIGINT, schedulers (Slurm, Kubernetes) stop a job with SIGTERM
and a closed terminal sends SIGHUP. Turning all three into an exception like
Ctrl-C's KeyboardInterrupt lets every command keep its best result, remove
its temporary files and exit with 128 + the signal's number
(docs/design.md section 10).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; `signum` says which (a KeyboardInterrupt, so Ctrl-C handlers catch it too)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def signal_of(err: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: its own, or SIGINT for a plain KeyboardInterrupt."""
    return getattr(err, "signum", signal.SIGINT)


def exit_code_of(err: KeyboardInterrupt) -> int:
    """128 + the signal number, as a shell reports a process the signal ended."""
    return 128 + signal_of(err)


def signal_name(err: KeyboardInterrupt) -> str:
    return signal.Signals(signal_of(err)).name


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block every stop signal raises Interrupted; the previous handlers return after.

    A signal the process ignores (nohup, a background job's SIGINT) stays
    ignored. Outside the main thread Python cannot set handlers: nothing changes.
    """
    with _handling(_raise):
        yield


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block stop signals are held back, so the work in it finishes (a result is saved);
    the first one is raised as Interrupted when the block ends."""
    caught: list[int] = []
    with _handling(lambda signum, frame: caught.append(signum)):
        yield
    if caught:
        raise Interrupted(caught[0])


@contextmanager
def _handling(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """`handler` for every stop signal the process does not ignore, in the main thread; the old ones after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current == signal.SIG_IGN:
            continue
        previous[sig] = signal.SIG_DFL if current is None else current
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)
