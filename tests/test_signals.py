"""Stop signals and stuck ranks, on real processes (docs/design.md section 10).

`solve` takes SIGTERM and SIGHUP like Ctrl-C: the best schedule so far is
saved with status `interrupted`, exit 128 + the signal. The `train` launcher
stops every rank on SIGINT or SIGTERM with one summary line and the report so
far; a frozen rank ends the job through its peers' time-outs; a launcher
killed outright takes its ranks and its temporary folder with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipesynth.construct import generate
from pipesynth.formats import schedule_json

ROOT = Path(__file__).resolve().parents[1]
WAIT = 60  # seconds before a test gives up on a process (a hang fails the test, it does not block the suite)


def start(args: list, tmp_path: Path) -> subprocess.Popen:
    """`python -m pipesynth ARGS` in tmp_path, stdout and stderr to files there, temporary files in tmp_path/tmp."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp")}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "pipesynth", *map(str, args)],
            cwd=tmp_path,
            stdout=out,
            stderr=err,
            env=env,
            # A suite run under nohup passes SIGHUP on ignored, and pipesynth keeps an ignored signal ignored.
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
        )


def wait_for(folder: Path, text: str, proc: subprocess.Popen) -> None:
    """Until `text` appears on the process's stdout or stderr (progress may go to either)."""
    deadline = time.monotonic() + WAIT
    while text not in (output := (folder / "out").read_text() + (folder / "err").read_text()):
        assert proc.poll() is None, f"exited early: {output}"
        assert time.monotonic() < deadline, f"{text!r} never appeared in {output!r}"
        time.sleep(0.05)


def last_lines(folder: Path) -> tuple[list[str], str]:
    """The `error:` lines on stderr, and its last line (progress lines may come before)."""
    lines = (folder / "err").read_text().strip().splitlines()
    return [line for line in lines if line.startswith("error:")], lines[-1]


def ranks_of(launcher: int) -> list[int]:
    """The launcher's rank processes (its children other than the temporary folder's cleaner)."""
    pids = []
    for task in Path(f"/proc/{launcher}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return [p for p in pids if b"shutil" not in Path(f"/proc/{p}/cmdline").read_bytes()]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def ours(tmp_path: Path) -> list[Path]:
    """pipesynth's temporary files and folders (torch keeps its own caches there too)."""
    return list((tmp_path / "tmp").glob("pipesynth-*"))


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_solve_saves_the_best_schedule_on_sigterm_and_sighup(sig, tmp_path):
    # A gap that stays open (V-Min level, unequal costs): the search runs until the signal, never ends first.
    problem = ["-d", 8, "-m", 32, "--memory", 8, "--cost", "F=3,B=4,W=2"]
    proc = start(["solve", *problem, "-t", 120, "--workers", 1, "-o", "best.json"], tmp_path)
    wait_for(tmp_path, "block", proc)
    proc.send_signal(sig)
    assert proc.wait(WAIT) == 128 + sig
    err = (tmp_path / "err").read_text()
    assert f"interrupt ({sig.name}): stopping the search" in err and "Traceback" not in err
    schedule = schedule_json.load(tmp_path / "best.json")  # validated on reading
    assert schedule.provenance["status"] == "interrupted"
    assert not ours(tmp_path)


@pytest.fixture
def schedule_file(tmp_path):
    pytest.importorskip("torch")
    schedule_json.save(generate("1f1b", 2, 2), tmp_path / "s.json")
    return "s.json"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_train_launcher_stops_every_rank_and_keeps_the_report_so_far(sig, tmp_path, schedule_file):
    proc = start(["train", schedule_file, "--steps", 100000, "--report", "run.json"], tmp_path)
    wait_for(tmp_path, "step 2/", proc)
    ranks = ranks_of(proc.pid)
    assert len(ranks) == 2
    proc.send_signal(sig)  # to the launcher alone
    assert proc.wait(WAIT) == 128 + sig
    errors, last = last_lines(tmp_path)
    assert not errors and "Traceback" not in (tmp_path / "err").read_text()
    assert last.startswith(f"interrupted ({sig.name}): stopped 2 ranks, after "), last
    assert last.endswith("of 100000 steps; the report so far is in run.json")
    report = json.loads((tmp_path / "run.json").read_text())
    assert len(report["losses"]) >= 2 and len(report["ranks"]) == 2
    assert int(last.split("after ")[1].split(" ")[0]) == len(report["losses"])
    assert all(gone(pid) for pid in ranks)
    wait_until(lambda: not ours(tmp_path), "the temporary folder is left")


def test_a_frozen_rank_ends_the_job_through_its_peers_time_outs(tmp_path, schedule_file):
    proc = start(["train", schedule_file, "--steps", 100000, "--timeout", 2], tmp_path)
    wait_for(tmp_path, "step 2/", proc)
    ranks = ranks_of(proc.pid)
    os.kill(ranks[1], signal.SIGSTOP)
    assert proc.wait(WAIT) == 1
    errors, last = last_lines(tmp_path)
    assert errors == [last] and last.startswith("error: rank 1 was frozen (stopped by a signal)"), errors
    assert all(gone(pid) for pid in ranks)
    wait_until(lambda: not ours(tmp_path), "the temporary folder is left")


@pytest.mark.parametrize("fault", ["raises", "killed"])
def test_a_failing_rank_ends_train_naming_it_and_leaves_the_old_report_whole(fault, tmp_path, schedule_file):
    (tmp_path / "run.json").write_text("the previous report\n")
    if fault == "raises":  # a learning rate of 1e30 makes the second step's loss nan on the last rank
        proc = start(["train", schedule_file, "--steps", 100000, "--lr", 1e30, "--report", "run.json"], tmp_path)
        ranks = []
    else:
        proc = start(["train", schedule_file, "--steps", 100000, "--report", "run.json"], tmp_path)
        wait_for(tmp_path, "step 2/", proc)
        ranks = ranks_of(proc.pid)
        os.kill(ranks[1], signal.SIGKILL)
    assert proc.wait(WAIT) == 1
    errors, last = last_lines(tmp_path)
    named = {
        "raises": "rank 1 failed: NonFiniteLossError: rank 1: the loss is nan",
        "killed": "rank 1 died (signal SIGKILL)",
    }
    assert errors == [last] and last.startswith(f"error: {named[fault]}"), errors
    assert "Traceback" not in (tmp_path / "err").read_text()
    assert all(gone(pid) for pid in ranks)
    assert (tmp_path / "run.json").read_text() == "the previous report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["err", "out", "run.json", "s.json", "tmp"]
    wait_until(lambda: not ours(tmp_path), "the temporary folder is left")


def test_a_launcher_killed_outright_takes_its_ranks_and_temporary_folder_with_it(tmp_path, schedule_file):
    proc = start(["train", schedule_file, "--steps", 100000], tmp_path)
    wait_for(tmp_path, "step 2/", proc)
    ranks = ranks_of(proc.pid)
    assert ours(tmp_path)
    proc.kill()
    proc.wait(WAIT)
    wait_until(lambda: all(gone(pid) for pid in ranks), "a rank outlived its launcher")
    wait_until(lambda: not ours(tmp_path), "the temporary folder is left")


def finish_or_hang(rank: int, world: int, device, seconds: float) -> int:
    """Rank 1 hangs outside any wait its peers could time out on."""
    if rank == 1:
        time.sleep(seconds)
    return rank


def test_a_rank_still_running_a_timeout_after_another_finished_is_ended_as_hung():
    pytest.importorskip("torch")
    from pipesynth.runtime.launch import LaunchError, launch

    with pytest.raises(LaunchError, match=r"^rank 1 hung: still running 1 s after another rank had finished$"):
        launch(finish_or_hang, 2, 30.0, timeout=1)
