"""Start N ranks on this machine, run a function on each, collect results; never hang, never leave anything behind.

`launch(fn, world_size, *args)` starts one process per rank (fork on Linux
CPU runs, spawn otherwise), joins them to one process group (gloo on CPU,
NCCL when `device="cuda"`, one GPU per rank) on a free local port, runs
`fn(rank, world_size, device, *args)` and returns the per-rank results. It
watches the ranks itself (docs/design.md sections 7 and 10):

- a rank that fails stops the others at once; `LaunchError` carries the
  first cause, not the errors it triggered on other ranks;
- a hung or frozen (SIGSTOP) rank makes its peers' waits time out after
  `timeout`; once any rank has finished, the others get `timeout` more;
- SIGINT, SIGTERM or SIGHUP to the launcher stop every rank within about a
  second; `LaunchInterrupted` carries what each rank last passed to
  `report_progress`. Ranks ignore Ctrl-C (the launcher acts on it) and die
  with the launcher even when it is killed outright (PR_SET_PDEATHSIG);
- the temporary folder is removed on every exit, by a small cleaner
  process when the launcher itself is killed.

Under torchrun use `init_from_env()` instead (multi-node comes from torchrun).
"""

from __future__ import annotations

import ctypes
import datetime
import math
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipesynth.errors import PipesynthError
from pipesynth.interrupts import STOP_SIGNALS, interruptible, signal_of
from pipesynth.runtime.watchdog import ERROR_FILE_VARIABLE

#: Set by launch() in each rank: the folder where `report_progress` keeps the rank's result so far.
PROGRESS_FOLDER_VARIABLE = "PIPESYNTH_LAUNCH_FOLDER"
#: Seconds a stopped rank gets to exit on SIGTERM before SIGKILL.
STOP_GRACE = 1.0
#: Longest `timeout` (seconds): no wait needs more, and a huge one overflows in the ranks (1e300 killed them).
MAX_TIMEOUT = 86_400
#: Removes the folder (argv[1]) once its stdin closes: when the launcher and its ranks are gone, however.
_CLEANER = "import shutil, sys; sys.stdin.buffer.read(); shutil.rmtree(sys.argv[1], ignore_errors=True)"


class LaunchError(PipesynthError):
    """A rank failed; the message is its error (the others were stopped), `details` its traceback."""

    exit_code = 1

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class LaunchInterrupted(LaunchError):
    """A stop signal reached the launcher and every rank was stopped.

    `partial[r]` is what rank r last passed to `report_progress` (its result
    if it had finished; None if neither); `report` is for the caller to fill
    (e.g. the training report so far). Exit code 128 + the signal.
    """

    def __init__(self, signum: int, partial: list[Any]) -> None:
        self.signum = signum
        self.partial = partial
        self.report: Any = None
        self.exit_code = 128 + signum
        super().__init__(f"interrupted ({signal.Signals(signum).name}): stopped {len(partial)} ranks")


def backend_for(device: str) -> str:
    """gloo for cpu, nccl for cuda; a device torch does not know, or pipesynth does not run on, is bad input."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise PipesynthError(f"device: cannot read {device!r}; give cpu or cuda (cuda:N)") from None
    if kind not in ("cpu", "cuda"):
        raise PipesynthError(f"device: {device!r} is not supported; give cpu or cuda")
    return "nccl" if kind == "cuda" else "gloo"


def init_from_env(device: str = "cpu", timeout: float = 60.0) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (env://); return rank, world size, this rank's device."""
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size(), _rank_device(device, int(os.environ.get("LOCAL_RANK", 0)))


def _rank_device(device: str, local_rank: int) -> torch.device:
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def report_progress(value: Any) -> None:
    """Keep `value` (picklable) as this rank's result so far: an interrupted launch() hands it back.

    Does nothing outside launch() (e.g. under torchrun).
    """
    folder = os.environ.get(PROGRESS_FOLDER_VARIABLE)
    if folder is None:
        return
    rank = os.environ.get("RANK", "0")
    tmp = Path(folder, f"rank{rank}.partial.tmp")
    tmp.write_bytes(pickle.dumps(value))
    os.replace(tmp, Path(folder, f"rank{rank}.partial.pkl"))


def _become_rank(launcher: int) -> None:
    """Signals of a rank: Ctrl-C is the launcher's to handle, SIGTERM ends it, and so does the launcher's death."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by the launcher while it started us
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != launcher:  # the launcher died before the line above
        os._exit(1)


def _worker(
    rank: int, world: int, port: int, device: str, timeout: float, threads: int, out: str, fn, args, launcher: int
) -> None:
    _become_rank(launcher)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    # Where an error that cannot be raised here (the watchdog's, on its own thread) is written.
    os.environ[ERROR_FILE_VARIABLE] = str(Path(out, f"rank{rank}.err"))
    os.environ[PROGRESS_FOLDER_VARIABLE] = out
    torch.set_num_threads(threads)
    limit = datetime.timedelta(seconds=timeout)
    try:
        dist.init_process_group(backend_for(device), rank=rank, world_size=world, timeout=limit)
    except BaseException as err:
        _write_error(out, rank, err)
        raise SystemExit(1) from None
    failed = False
    try:
        result = fn(rank, world, _rank_device(device, rank), *args)
        Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    except BaseException as err:
        # Written before this rank exits (and so before peers see it gone): the launcher
        # can then tell a root cause from the errors it triggers on other ranks, and order
        # the failures by when they happened (the file's modification time).
        _write_error(out, rank, err)
        failed = True
    finally:
        dist.destroy_process_group()
    if failed:
        raise SystemExit(1)  # the error is in the file: no traceback on the terminal


def _write_error(out: str, rank: int, err: BaseException) -> None:
    Path(out, f"rank{rank}.err").write_text(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")


def launch(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    device: str = "cpu",
    timeout: float = 60.0,
    threads: int = 1,
    start_method: str | None = None,
) -> list[Any]:
    """Run `fn(rank, world_size, device, *args)` on `world_size` local ranks; return their results.

    `fn` must be importable (a module-level function) and its result
    picklable. `timeout` bounds process-group set-up and collectives;
    pass the same value to the executor for P2P waits. `start_method`
    defaults to fork on Linux CPU runs (seconds faster per launch; safe
    after the parent ran torch ops as long as each rank stays at one
    thread, the default: OpenMP pools do not survive a fork) and spawn
    otherwise (CUDA cannot fork).
    """
    backend = backend_for(device)
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise PipesynthError(f"timeout: must be a positive number of seconds, got {timeout!r}")
    if timeout > MAX_TIMEOUT:
        raise PipesynthError(f"timeout: {timeout:g} seconds; at most {MAX_TIMEOUT:,} (a day)")
    if world_size < 1:
        raise PipesynthError(f"ranks: must be at least 1, got {world_size}")
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        gpus = torch.cuda.device_count()
        raise LaunchError(f"{world_size} ranks on NCCL need {world_size} GPUs; this machine has {gpus}")
    if start_method is None:
        start_method = "fork" if sys.platform == "linux" and backend == "gloo" else "spawn"
    context = mp.get_context(start_method)
    with _launch_folder() as out, interruptible():
        worker_args = (world_size, free_port(), device, timeout, threads, out, fn, args, os.getpid())
        ranks = [
            context.Process(target=_worker, args=(r, *worker_args), name=f"pipesynth-rank{r}")
            for r in range(world_size)
        ]
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # a rank resets its handlers before taking any
            try:
                for p in ranks:
                    p.start()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            failed = _supervise(ranks, timeout)
        except KeyboardInterrupt as err:
            _stop(ranks)
            raise LaunchInterrupted(signal_of(err), _partial(out, world_size)) from None
        except BaseException:
            _stop(ranks)
            raise
        if failed is not None:
            frozen = _stop(ranks)
            raise _root_cause(out, failed[0], failed[1], frozen, timeout)
        return [pickle.loads(Path(out, f"rank{r}.pkl").read_bytes()) for r in range(world_size)]


@contextmanager
def _launch_folder() -> Iterator[str]:
    """A temporary folder, removed when the block ends, or by a cleaner process if this one is killed."""
    folder = tempfile.mkdtemp(prefix="pipesynth-launch-")
    cleaner = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _CLEANER, folder],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of the terminal's process group: Ctrl-C does not reach it
    )
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        cleaner.stdin.close()  # its end of file: it finds the folder gone and exits
        try:
            cleaner.wait(timeout=5)
        except subprocess.TimeoutExpired:
            cleaner.kill()


def _supervise(ranks: list[BaseProcess], timeout: float) -> tuple[int, int | None] | None:
    """Wait for every rank; the first that fails as (rank, exit code), (rank, None) for one still running
    `timeout` s after another finished (hung), or None when all succeed."""
    pending = {p.sentinel: r for r, p in enumerate(ranks)}
    deadline = None
    while pending:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return min(pending.values()), None
        for sentinel in wait(list(pending), timeout=left):
            rank = pending.pop(sentinel)
            ranks[rank].join()
            if ranks[rank].exitcode != 0:
                return rank, ranks[rank].exitcode
            if deadline is None:
                deadline = time.monotonic() + timeout
    return None


def _stop(ranks: list[BaseProcess]) -> set[int]:
    """End every rank still running (SIGTERM, then SIGKILL after STOP_GRACE); return those that were frozen."""
    alive = [(r, p) for r, p in enumerate(ranks) if p.pid is not None and p.is_alive()]
    frozen = {r for r, p in alive if _frozen(p.pid)}
    for _, p in alive:
        p.terminate()
        os.kill(p.pid, signal.SIGCONT)  # a frozen rank takes SIGTERM only once it runs
    deadline = time.monotonic() + STOP_GRACE
    for _, p in alive:
        p.join(max(0.0, deadline - time.monotonic()))
    for _, p in alive:
        if p.is_alive():
            p.kill()
        p.join()
    return frozen


def _frozen(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP, a debugger): state T in /proc (False where unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


def _partial(out: str, world_size: int) -> list[Any]:
    """Each rank's result if it finished, else what it last reported (None if nothing)."""
    results = []
    for r in range(world_size):
        paths = [Path(out, f"rank{r}.pkl"), Path(out, f"rank{r}.partial.pkl")]
        found = next((p for p in paths if p.exists()), None)
        results.append(None if found is None else pickle.loads(found.read_bytes()))
    return results


# What a rank reports when a peer failed first: its own error is a symptom, not the cause.
_SYMPTOMS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out", "timed out")


def _is_symptom(text: str) -> bool:
    first = text.partition("\n")[0]
    return first.startswith("PipelineTimeoutError") or any(marker in first for marker in _SYMPTOMS)


def _where(details: str) -> str:
    """The innermost frame of a traceback, as 'file:line in function' ('' if none)."""
    frames = [line.strip() for line in details.splitlines() if line.strip().startswith('File "')]
    if not frames:
        return ""
    file, _, rest = frames[-1].removeprefix('File "').partition('", line ')
    line, _, func = rest.partition(", in ")
    return f" (at {Path(file).name}:{line} in {func})"


def _root_cause(out: str, rank: int, exitcode: int | None, frozen: set[int], timeout: float) -> LaunchError:
    """The failure to report: the first rank's own error, not what it caused on other ranks.

    In order of preference: the earliest Python error that is not a symptom
    of a peer's failure (a P2P time-out, a connection closed by the peer);
    else a frozen rank its peers waited for; else a rank that died without a
    Python error (a signal, an exit code) or never finished; else the
    earliest symptom.
    """
    files = sorted(Path(out).glob("rank*.err"), key=lambda path: path.stat().st_mtime_ns)
    errors = [(int(path.stem[4:]), path.read_text()) for path in files]
    failed = sorted({r for r, _ in errors} | {rank} | frozen)
    causes = [(r, text) for r, text in errors if not _is_symptom(text)]
    if not causes and frozen:
        first = min(frozen)
        message = f"rank {first} was frozen (stopped by a signal) and its peers' waits timed out"
        return LaunchError(_also(message, first, failed))
    if not causes and rank not in {r for r, _ in errors}:
        if exitcode is None:
            message = f"rank {rank} hung: still running {timeout:g} s after another rank had finished"
        else:
            how = f"signal {_signal_name(-exitcode)}" if exitcode < 0 else f"exit code {exitcode}"
            message = f"rank {rank} died ({how}) without a Python error"
        return LaunchError(_also(message, rank, failed))
    first, text = (causes or errors)[0]
    line, _, details = text.partition("\n")
    return LaunchError(_also(f"rank {first} failed: {line}{_where(details)}", first, failed), details)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def _also(message: str, rank: int, failed: list[int]) -> str:
    rest = [r for r in failed if r != rank]
    return message + (f"; also failed: rank{'s' if len(rest) > 1 else ''} {', '.join(map(str, rest))}" if rest else "")
