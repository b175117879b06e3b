"""Start N ranks on this machine, run a function on each, collect results; never hang.

`launch(fn, world_size, *args)` spawns processes (torch.multiprocessing),
joins them to one process group (gloo on CPU, NCCL when `device="cuda"`,
one GPU per rank) on a free local port, runs `fn(rank, world_size, *args)`
and returns the per-rank results. If any rank raises, the others are
killed at once and `LaunchError` carries the failing rank's last message.
Under torchrun use `init_from_env()` instead (multi-node comes from torchrun).
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException, ProcessExitedException

from pipesynth.errors import PipesynthError
from pipesynth.runtime.watchdog import ERROR_FILE_VARIABLE


class LaunchError(PipesynthError):
    """A rank failed; the message is its error (the others were stopped), `details` its traceback."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def backend_for(device: str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


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


def _worker(rank: int, world: int, port: int, device: str, timeout: float, threads: int, out: str, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    # Where an error that cannot be raised here (the watchdog's, on its own thread) is written.
    os.environ[ERROR_FILE_VARIABLE] = str(Path(out, f"rank{rank}.err"))
    torch.set_num_threads(threads)
    limit = datetime.timedelta(seconds=timeout)
    dist.init_process_group(backend_for(device), rank=rank, world_size=world, timeout=limit)
    try:
        result = fn(rank, world, _rank_device(device, rank), *args)
        Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(result))
    except BaseException as err:
        # Written before this rank exits (and so before peers see it gone): the launcher
        # can then tell a root cause from the errors it triggers on other ranks, and order
        # the failures by when they happened (the file's modification time).
        Path(out, f"rank{rank}.err").write_text(f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
        raise
    finally:
        dist.destroy_process_group()


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
    if backend_for(device) == "nccl" and torch.cuda.device_count() < world_size:
        gpus = torch.cuda.device_count()
        raise LaunchError(f"{world_size} ranks on NCCL need {world_size} GPUs; this machine has {gpus}")
    if start_method is None:
        start_method = "fork" if sys.platform == "linux" and backend_for(device) == "gloo" else "spawn"
    with tempfile.TemporaryDirectory(prefix="pipesynth-launch-") as out:
        try:
            mp.start_processes(
                _worker,
                args=(world_size, free_port(), device, timeout, threads, out, fn, args),
                nprocs=world_size,
                start_method=start_method,
            )
        except ProcessException as err:
            raise _root_cause(out, err) from None
        return [pickle.loads(Path(out, f"rank{r}.pkl").read_bytes()) for r in range(world_size)]


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


def _root_cause(out: str, err: ProcessException) -> LaunchError:
    """The failure to report: the first rank's own error, not what it caused on other ranks.

    In order of preference: the earliest Python error that is not a symptom
    of a peer's failure (a P2P time-out, a connection closed by the peer);
    else a rank that died without a Python error (a signal, an exit code);
    else the earliest symptom.
    """
    files = sorted(Path(out).glob("rank*.err"), key=lambda path: path.stat().st_mtime_ns)
    errors = [(int(path.stem[4:]), path.read_text()) for path in files]
    others = sorted({r for r, _ in errors} | {err.error_index})
    causes = [(r, text) for r, text in errors if not _is_symptom(text)]
    if not causes and err.error_index not in {r for r, _ in errors}:
        if isinstance(err, ProcessExitedException):
            how = f"signal {err.signal_name}" if err.signal_name else f"exit code {err.exit_code}"
            message = f"rank {err.error_index} died ({how}) without a Python error"
        else:
            message = f"rank {err.error_index} failed: {str(err).strip()}"
        return LaunchError(_also(message, err.error_index, others))
    if not errors:
        return LaunchError(_also(f"rank {err.error_index} failed: {str(err).strip()}", err.error_index, others))
    rank, text = (causes or errors)[0]
    first, _, details = text.partition("\n")
    return LaunchError(_also(f"rank {rank} failed: {first}{_where(details)}", rank, others), details)


def _also(message: str, rank: int, failed: list[int]) -> str:
    rest = [r for r in failed if r != rank]
    return message + (f"; also failed: rank{'s' if len(rest) > 1 else ''} {', '.join(map(str, rest))}" if rest else "")
