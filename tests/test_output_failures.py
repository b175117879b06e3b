"""Outputs that cannot be written: found before the work, never half written, and long work is never lost.

For every command with an output: a folder as the target and a read-only
folder are refused before any work (exit 2); a full disk at the final write
fails in one line (exit 1), leaves the old file whole, and for the long
commands (solve, train --report, pareto --solve, profile) saves the result
elsewhere and names it (docs/design.md section 10). Writes keep the target's
mode (or the umask's), follow symlinks, and write devices in place.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipesynth.analysis.pareto as pareto
from pipesynth.cli import app
from pipesynth.construct import generate
from pipesynth.formats import files, schedule_json

ROOT = Path(__file__).resolve().parents[1]
OLD = b"the previous output\n"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


class Disk:
    """Makes `files.write_new_file` (where every output reaches the disk) fail in chosen folders."""

    def __init__(self, monkeypatch) -> None:
        self.failing: dict[Path, OSError] = {}
        real = files.write_new_file

        def write(folder, name, data, mode):
            err = self.failing.get(Path(folder).resolve())
            if err is not None and (data or err.errno != errno.ENOSPC):  # a full disk still takes an empty file
                raise err
            return real(folder, name, data, mode)

        monkeypatch.setattr(files, "write_new_file", write)

    def full(self, folder: Path) -> None:
        self.failing[folder.resolve()] = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def read_only(self, folder: Path) -> None:
        if os.geteuid() == 0:  # root writes anywhere: the permission error is simulated
            self.failing[folder.resolve()] = PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        else:
            folder.chmod(0o555)


@pytest.fixture
def disk(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # rescued files land here, not in /tmp
    (tmp_path / "tmp").mkdir()
    yield Disk(monkeypatch)
    for folder in tmp_path.iterdir():
        folder.chmod(0o755)


NEEDS_TORCH = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
REPORT = {
    "schedule": "1f1b",
    "losses": [4.0, 3.5],
    "ranks": [{"rank": 0, "measured_peak_bytes": 1024, "step_seconds": [0.1, 0.1]}],
}


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A schedule and a torch CSV to read in the current folder; fast stand-ins for the long work
    (training, profiling, the pareto solver): what is tested is how its result is written."""
    monkeypatch.chdir(tmp_path)
    schedule_json.save(generate("1f1b", 2, 2), tmp_path / "in.json")
    (tmp_path / "in.csv").write_text("0F0,0B0\n1F0,1B0\n")
    point = pareto.ParetoPoint("solve@1x", 9.0, 0.1, 2.0, 1.0)
    monkeypatch.setattr(pareto, "solver_points", lambda *args, **kwargs: ([point], []))
    if importlib.util.find_spec("torch") is not None:
        import pipesynth.runtime.profile as profile
        import pipesynth.runtime.train as train

        stages = tuple(profile.StageProfile(s, 10.0, 12.0, 5.0, 100, 120, 60, None) for s in range(2))
        measured = profile.ModelProfile(stages, 3.0)
        monkeypatch.setattr(profile, "profile_stages", lambda *args, **kwargs: measured)
        monkeypatch.setattr(train, "run_training", lambda schedule, cfg, ranks: REPORT)
    return tmp_path


def is_schedule(path: Path) -> bool:
    return schedule_json.load(path).problem.devices == 2


def is_png(path: Path) -> bool:
    return path.read_bytes().startswith(b"\x89PNG")


#: name, arguments (OUT is the output), suffix, whether a failed final write saves the result, its check
COMMANDS = [
    ("schedule", ["schedule", "1f1b", "-d", 2, "-m", 2, "-o", "OUT"], ".json", False, is_schedule),
    ("solve", ["solve", "-d", 2, "-m", 2, "-q", "-t", 1, "--deterministic", "-o", "OUT"], ".json", True, is_schedule),
    ("export", ["export", "in.json", "--to", "torch-csv", "-o", "OUT"], ".csv", False, None),
    ("import", ["import", "in.csv", "-o", "OUT"], ".json", False, is_schedule),
    ("show", ["show", "in.json", "--no-color", "--out", "OUT"], ".png", False, is_png),
    ("block", ["block", "v-half", "-d", 2, "--out", "OUT"], ".png", False, is_png),
    ("pareto", ["pareto", "-d", 2, "-m", 2, "--out", "OUT"], ".png", False, is_png),
    ("pareto --solve", ["pareto", "-d", 2, "-m", 2, "--solve", "--out", "OUT"], ".png", True, is_png),
    pytest.param(
        "train --report",
        ["train", "in.json", "--report", "OUT"],
        ".json",
        True,
        lambda path: json.loads(path.read_text()) == REPORT,
        marks=NEEDS_TORCH,
    ),
    pytest.param(
        "profile",
        ["profile", "--devices", 2, "--placement", "linear", "--comm", 0, "-o", "OUT"],
        ".json",
        True,
        lambda path: schedule_json.load_problem(path).devices == 2,
        marks=NEEDS_TORCH,
    ),
]
IDS = ["schedule", "solve", "export", "import", "show", "block", "pareto", "pareto --solve", "train", "profile"]


def invoke(args, out: Path, folder: Path):
    return run(*[str(out) if a == "OUT" else a for a in args])


def one_error_line(result, code: int, fragment: str) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    return errors[0]


@pytest.mark.parametrize("name,args,suffix,rescue,check", COMMANDS, ids=IDS)
def test_a_folder_as_the_output_is_refused_before_any_work(name, args, suffix, rescue, check, inputs, disk):
    target = inputs / f"out{suffix}"
    target.mkdir()
    one_error_line(invoke(args, target, inputs), 2, f"{target}: is a folder; give a file name")
    assert target.is_dir() and not any(target.iterdir())


@pytest.mark.parametrize("name,args,suffix,rescue,check", COMMANDS, ids=IDS)
def test_a_read_only_folder_is_refused_before_any_work(name, args, suffix, rescue, check, inputs, disk):
    folder = inputs / "locked"
    folder.mkdir()
    disk.read_only(folder)
    one_error_line(invoke(args, folder / f"out{suffix}", inputs), 2, "cannot write (Permission denied)")
    assert not any(folder.iterdir())


@pytest.mark.parametrize("name,args,suffix,rescue,check", COMMANDS, ids=IDS)
def test_a_full_disk_leaves_the_old_file_whole_and_long_work_is_saved_elsewhere(
    name, args, suffix, rescue, check, inputs, disk
):
    folder = inputs / "full"
    folder.mkdir()
    target = folder / f"out{suffix}"
    target.write_bytes(OLD)
    disk.full(folder)
    line = one_error_line(invoke(args, target, inputs), 1, f"{target}: cannot write (No space left on device)")
    assert target.read_bytes() == OLD and [p.name for p in folder.iterdir()] == [target.name]
    saved = re.search(r"the result is saved in (\S+)$", line)
    assert (saved is not None) == rescue, line
    if rescue:
        kept = Path(saved.group(1))
        assert kept.parent == inputs / "tmp" and kept.name.startswith(f"out{suffix}.rescued-")
        assert check is None or check(kept)


def test_a_replaced_file_keeps_its_mode_and_a_new_one_takes_the_umask(tmp_path):
    old = tmp_path / "shared.json"
    old.write_text("{}")
    old.chmod(0o644)
    assert run("schedule", "1f1b", "-d", 2, "-m", 2, "-o", old).exit_code == 0
    assert old.stat().st_mode & 0o777 == 0o644 and is_schedule(old)
    previous = os.umask(0o027)
    try:
        assert run("schedule", "1f1b", "-d", 2, "-m", 2, "-o", tmp_path / "new.json").exit_code == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o640


def test_a_symlink_is_followed_and_stays_a_link(tmp_path):
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "42.json"
    real.write_text("{}")
    link = tmp_path / "latest.json"
    link.symlink_to(real)
    dangling = tmp_path / "next.json"
    dangling.symlink_to(tmp_path / "runs" / "43.json")
    for target in (link, dangling):
        assert run("schedule", "1f1b", "-d", 2, "-m", 2, "-o", target).exit_code == 0
        assert target.is_symlink()
    assert is_schedule(real) and is_schedule(tmp_path / "runs" / "43.json")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["42.json", "43.json"]


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from pipesynth.formats.files import write_new_file
write_new_file(Path(sys.argv[1]), "out.json", b"half a schedule", 0o644)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_next_write_removes_the_temporary_file_a_killed_writer_left_and_nothing_else(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], env=env)
    assert killed.wait() == -9
    (stale,) = tmp_path.glob(".out.json.*.tmp")
    assert stale.name.startswith(f".out.json.{killed.pid}.")
    live = Path(files.write_new_file(tmp_path, "out.json", b"another writer, still writing", 0o644))
    dead = 2**22 + 1  # above the largest process id Linux gives (PID_MAX_LIMIT)
    lookalikes = [
        f".out.json.{dead}.abcdefgh.tmp.bak",
        f".out.json.{dead}.abcdefghi.tmp",
        f".out.json.x{dead}.abcdefgh.tmp",
        f".other.json.{dead}.abcdefgh.tmp",
        f"out.json.{dead}.abcdefgh.tmp",
    ]
    for name in lookalikes:
        (tmp_path / name).write_text("not ours")
    files.write_text_atomic(tmp_path / "out.json", "new\n")
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*lookalikes, live.name, "out.json"])
    assert (tmp_path / "out.json").read_text() == "new\n"


def test_a_device_is_written_in_place_never_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run("schedule", "1f1b", "-d", 2, "-m", 2, "-o", "/dev/null").exit_code == 0
    one_error_line(run("schedule", "1f1b", "-d", 2, "-m", 2, "-o", "/dev/full"), 1, "No space left on device")
    line = one_error_line(run("solve", "-d", 2, "-m", 2, "-q", "-t", 1, "-o", "/dev/full"), 1, "/dev/full: cannot")
    assert is_schedule(Path(re.search(r"saved in (\S+)$", line).group(1)))
    assert Path("/dev/null").is_char_device() and Path("/dev/full").is_char_device()


def test_a_schedule_that_stdout_cannot_take_is_saved_elsewhere(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    args = [sys.executable, "-m", "pipesynth", "solve", "-d", 2, "-m", 2, "-q", "-t", 1, "--deterministic"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([str(a) for a in args], stdout=full, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: stdout: cannot write (No space left on device); the result is saved in ")
    assert is_schedule(Path(line.rsplit(" ", 1)[1]))


def test_when_nowhere_takes_the_result_the_error_says_so(inputs, disk):
    folder = inputs / "full"
    folder.mkdir()
    disk.full(folder)
    disk.full(inputs / "tmp")
    result = run("solve", "-d", 2, "-m", 2, "-q", "-t", 1, "--deterministic", "-o", folder / "out.json")
    line = one_error_line(result, 1, "out.json: cannot write (No space left on device)")
    assert line.endswith("; the result could not be saved elsewhere either (No space left on device)")
