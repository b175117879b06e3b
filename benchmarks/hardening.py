"""Hostile inputs and stop signals: how long each takes to be refused or to stop, and how much memory it takes.

Every case runs `python -m pipesynth` in a child process; the time is its
wall clock, the memory its peak resident size (GNU time's %M). The train cases
start a 2-rank run of the tiny GPT, wait for its third step, then send the
signal; they time the launcher's exit and check that no rank and no
temporary folder outlive it. docs/design.md sections 5.1 and 10.

    python -m benchmarks.hardening            # writes benchmarks/results/hardening.md
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import write_results
from pipesynth.construct import generate
from pipesynth.formats.schedule_json import dumps

ROOT = Path(__file__).resolve().parents[1]


def child(args: list[str], folder: Path, measured: bool = False, **popen) -> subprocess.Popen:
    """`python -m pipesynth ARGS` in `folder`; `measured`: under GNU time, its peak memory to folder/rss."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(folder / "tmp")}
    timer = ["/usr/bin/time", "-f", "%M", "-o", str(folder / "rss")] if measured else []
    return subprocess.Popen([*timer, sys.executable, "-m", "pipesynth", *args], cwd=folder, env=env, **popen)


def finish(proc: subprocess.Popen, started: float) -> tuple[int, float]:
    """Exit status and seconds since `started` of a child that ends."""
    code = proc.wait()
    return code, time.monotonic() - started


def hostile_files(folder: Path) -> list[tuple[str, list[str]]]:
    """(what, command) for each hostile input of the hardening issue, its files written to `folder`."""
    base = json.loads(dumps(generate("zb-h1", 2, 2)))
    files = {
        "billion.json": json.dumps({**base, "problem": {**base["problem"], "microbatches": 10**9}}),
        "million.json": json.dumps({**base, "problem": {**base["problem"], "microbatches": 10**6}}),
        "deep.json": "[" * 100_000 + "]" * 100_000,
        "digits.json": json.dumps(base).replace('"devices": 2', '"devices": ' + "9" * 400),
        "huge.json": '"' + "x" * (70 * 2**20) + '"',
        "binary.json": "",
        "cell.csv": "0F99999999999\n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    (folder / "binary.json").write_bytes(os.urandom(1 << 20))
    wide = generate("gpipe", 20_000, 1)
    (folder / "wide.json").write_text(dumps(wide))
    return [
        ('"microbatches": 1e9 in a 1 KB file', ["validate", "billion.json"]),
        ('"microbatches": 1e6 in a 1 KB file', ["simulate", "million.json"]),
        ("100,000 nested brackets", ["validate", "deep.json"]),
        ("a 400-digit integer", ["show", "digits.json"]),
        ("a 70 MB file", ["validate", "huge.json"]),
        ("1 MB of random bytes", ["validate", "binary.json"]),
        ("torch CSV cell 0F99999999999", ["import", "cell.csv"]),
        ("-d 99999999999999999999", ["schedule", "1f1b", "-d", "99999999999999999999", "-m", "2"]),
        ("--memory 1e400GiB", ["solve", "-d", "2", "-m", "2", "--memory", "1e400GiB"]),
        ("a valid file of 20,000 devices (60,000 actions)", ["validate", "wide.json"]),
    ]


def train_stops(folder: Path) -> list[tuple[str, int, float, int, int]]:
    """(how, exit code, seconds to stop, ranks left, temporary folders left) for each way a run is stopped."""
    (folder / "s.json").write_text(dumps(generate("1f1b", 2, 4)))
    rows = []
    for how in ("SIGINT to the launcher", "SIGINT to the process group", "SIGTERM", "SIGHUP", "SIGSTOP a rank"):
        args = ["train", "s.json", "--steps", "100000", "--timeout", "3", "--report", "run.json"]
        with open(folder / "out", "w") as out:
            proc = child(args, folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        while "step 3/" not in (folder / "out").read_text():
            time.sleep(0.02)
        ranks = _ranks(proc.pid)
        started = time.monotonic()
        if how == "SIGSTOP a rank":
            os.kill(ranks[1], signal.SIGSTOP)
        else:
            sig = getattr(signal, how.split()[0])
            (os.killpg if "group" in how else os.kill)(proc.pid, sig)
        code, seconds = finish(proc, started)
        left = list((folder / "tmp").glob("pipesynth-*"))
        rows.append((how, code, seconds, sum(_alive(r) for r in ranks), len(left)))
    with open(folder / "out", "w") as out:
        proc = child(["train", "s.json", "--steps", "100000"], folder, stdout=out, stderr=subprocess.STDOUT)
    while "step 3/" not in (folder / "out").read_text():
        time.sleep(0.02)
    ranks = _ranks(proc.pid)
    started = time.monotonic()
    proc.kill()
    proc.wait()
    while any(_alive(r) for r in ranks) or list((folder / "tmp").glob("pipesynth-*")):
        time.sleep(0.01)
    rows.append(("SIGKILL the launcher (ranks and folder gone)", -9, time.monotonic() - started, 0, 0))
    return rows


def _ranks(launcher: int) -> list[int]:
    pids = []
    for task in Path(f"/proc/{launcher}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    return [p for p in pids if b"shutil" not in Path(f"/proc/{p}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pipesynth-hardening-") as tmp:
        folder = Path(tmp)
        (folder / "tmp").mkdir()
        table = ["| input | command | exit | seconds | peak MB | error line |", "|---|---|---|---|---|---|"]
        for what, args in hostile_files(folder):
            started = time.monotonic()
            proc = child(args, folder, measured=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            err = proc.stderr.read().decode()
            code, seconds = finish(proc, started)
            peak = int((folder / "rss").read_text().split()[-1]) / 1024
            line = err.strip().splitlines()[-1][:90] if err.strip() else ""
            shown = " ".join(args)[:40]
            table.append(f"| {what} | `pipesynth {shown}` | {code} | {seconds:.2f} | {peak:.0f} | {line} |")
        table += ["", "| stopping `pipesynth train` (2 ranks, `--timeout 3`) | exit | seconds | ranks left | folders |"]
        table.append("|---|---|---|---|---|")
        for how, code, seconds, ranks, left in train_stops(folder):
            table.append(f"| {how} | {code} | {seconds:.2f} | {ranks} | {left} |")
    header = [
        "Each case is a fresh `python -m pipesynth` process (interpreter start and imports included: about 1 s",
        "without torch, 2 to 3 s with it). Peak MB is the process's peak resident memory.",
        f"Machine: {os.cpu_count()} CPU cores.",
    ]
    write_results("hardening", header, table, [])


if __name__ == "__main__":
    main()
