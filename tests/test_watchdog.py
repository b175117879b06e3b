"""The watchdog that bounds stream-ordered (NCCL) waits, driven by fake work objects on CPU."""

from __future__ import annotations

import threading
import time

from pipesynth.runtime.watchdog import Watchdog


class FakeWork:
    """A P2P op that completes when the test says so."""

    def __init__(self) -> None:
        self.done = False

    def is_completed(self) -> bool:
        return self.done


class Recorder:
    """on_timeout that records messages (instead of ending the test process)."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.fired = threading.Event()

    def __call__(self, message: str) -> None:
        self.messages.append(message)
        self.fired.set()


def settle(watchdog: Watchdog, outstanding: int) -> None:
    """Let the thread poll until `outstanding` ops remain (bounded: a broken watchdog fails, not hangs)."""
    for _ in range(400):
        if watchdog.outstanding == outstanding:
            return
        time.sleep(0.01)
    raise AssertionError(f"{watchdog.outstanding} ops outstanding, expected {outstanding}")


def test_an_op_that_completes_in_time_is_dropped_and_nothing_fires():
    record = Recorder()
    watchdog = Watchdog(rank=3, timeout=60.0, on_timeout=record, interval=0.01)
    work, other = FakeWork(), FakeWork()
    watchdog.watch(work, "F of stage 1 microbatch 0", 2, "receiving the activation")
    watchdog.watch(other, "B of stage 1 microbatch 0", 2, "sending the gradient")
    settle(watchdog, 2)  # the thread runs and keeps both while they are in flight
    work.done = True
    settle(watchdog, 1)
    other.done = True
    settle(watchdog, 0)
    watchdog.stop()
    assert record.messages == []


def test_an_overdue_op_fires_once_naming_rank_action_and_peer():
    record = Recorder()
    watchdog = Watchdog(rank=1, timeout=0.05, on_timeout=record, interval=0.01)
    late, fine = FakeWork(), FakeWork()
    fine.done = True
    watchdog.watch(late, "B of stage 2 microbatch 3", 0, "receiving the gradient")
    watchdog.watch(fine, "F of stage 2 microbatch 3", 0, "sending the activation")
    assert record.fired.wait(10)
    settle(watchdog, 0)  # fired ops are dropped: they cannot fire again
    time.sleep(0.05)  # a few more polls
    watchdog.stop()
    assert record.messages == [
        "rank 1, B of stage 2 microbatch 3: receiving the gradient with rank 0 timed out after 0.05 s"
    ]


def test_stop_ends_the_thread():
    watchdog = Watchdog(rank=0, timeout=60.0, on_timeout=Recorder(), interval=0.01)
    watchdog.stop()  # before any watch: nothing to end
    assert watchdog._thread is None
    watchdog = Watchdog(rank=0, timeout=60.0, on_timeout=Recorder(), interval=0.01)
    watchdog.watch(FakeWork(), "F of stage 0 microbatch 0", 1, "sending the activation")
    thread = watchdog._thread
    assert thread is not None and thread.is_alive() and thread.daemon
    watchdog.stop()
    assert not thread.is_alive()


def test_an_op_whose_is_completed_raises_is_reported_not_lost():
    class Broken:
        def is_completed(self) -> bool:
            raise RuntimeError("NCCL communicator was aborted")

    record = Recorder()
    watchdog = Watchdog(rank=2, timeout=0.05, on_timeout=record, interval=0.01)
    watchdog.watch(Broken(), "B of stage 1 microbatch 1", 0, "sending the gradient")
    assert record.fired.wait(10)
    watchdog.stop()
    assert record.messages == [
        "rank 2, B of stage 1 microbatch 1: sending the gradient with rank 0 timed out after 0.05 s"
    ]
