"""What every results file says about the run that wrote it: command, commit, machine, load."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
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
