"""What every results file says about the run that wrote it: command, commit, machine, load."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_record(script: str) -> dict:
    """The command line as run (`script` plus this process's arguments), the commit, host, cores and load."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return {
        "command": " ".join([f"python {script}", *map(shlex.quote, sys.argv[1:])]),
        "commit": commit.stdout.strip(),
        "host": platform.node() or "host",
        "cores": os.cpu_count(),
        "load": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def run_lines(runs: dict[str, dict]) -> list[str]:
    """One markdown bullet per run."""
    return [
        f"- {tag}: `{run['command']}` at commit {run['commit']} ({run['host']}, {run['cores']} cores, "
        f"workers=2, load average {run['load']} at the start)"
        for tag, run in runs.items()
    ]


def open_results(path: Path, module: str) -> tuple[dict, str]:
    """The results file's data (empty if new) with a new run recorded, and that run's tag (r1, r2, ...)."""
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}, "rows": []}
    tag = f"r{len(data['runs']) + 1}"
    data["runs"][tag] = run_record(f"-m {module}")
    return data, tag


def store_row(path: Path, data: dict, row: dict, key: Callable[[dict], tuple], render: Callable[[dict], str]) -> None:
    """Add `row` (replacing any with the same key), write the JSON at `path` and its markdown beside it."""
    data["rows"] = [r for r in data["rows"] if key(r) != key(row)] + [row]
    path.write_text(json.dumps(data, indent=1))
    path.with_suffix(".md").write_text(render(data))
