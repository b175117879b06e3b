"""The README's commands run as typed.

Every fenced block of shell commands is split into its command lines. The
quick ones run for real, in README order, in one temporary folder (with the
repository's schedules/ and examples/ beside them, so paths read as in a
checkout). The ones that train, profile, search for long, need torchrun or a
GPU, or run a benchmark are skipped, each with its reason in the report.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COMMAND = re.compile(r"^(pipesynth|python|torchrun|make)\s")
#: (pattern, why a matching command is not run by the test suite)
NOT_HERE = [
    (r"^make\b", "installs packages and runs the demo or the whole suite"),
    (r"^torchrun\b", "needs torchrun and several processes"),
    (r"^python (-m )?benchmarks\b", "a benchmark: minutes of measurements"),
    (r"^python examples/", "profiles, solves and trains a real model"),
    (r"^pipesynth train\b", "trains the tiny GPT on local ranks"),
    (r"^pipesynth profile\b", "profiles the tiny GPT on local ranks"),
    (r"^pipesynth demo\b(?!.*--no-train)", "trains the tiny GPT on 4 local ranks"),
    (r"\s--solve\b", "runs the solver at six caps"),
    (r"--device cuda", "needs a GPU"),
]
SOLVE_SECONDS = 10  # a solve or plan allowed to search longer than this is not run here
DEFAULT_SECONDS = {"solve": 30.0, "plan": 20.0}  # their --time-limit defaults


def readme_commands() -> list[str]:
    """Command lines of the README's shell blocks, in order."""
    found = []
    for lang, body in re.findall(r"```([^\n]*)\n(.*?)```", README.read_text(), re.S):
        if lang.strip() in ("", "sh", "bash", "shell", "console"):
            lines = re.sub(r"\\\n\s*", " ", body).splitlines()  # a command continued with a backslash is one
            found += [line.strip() for line in lines if COMMAND.match(line.strip())]
    return found


def why_not_run(command: str) -> str | None:
    for pattern, why in NOT_HERE:
        if re.search(pattern, command):
            return why
    searching = re.match(r"pipesynth (solve|plan)\b", command)
    if searching:
        limit = re.search(r"(?:-t|--time-limit)\s+(\S+)", command)
        seconds = float(limit.group(1)) if limit else DEFAULT_SECONDS[searching.group(1)]
        if seconds > SOLVE_SECONDS:
            return f"the solver may search for {seconds:g} s"
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    for name in ("schedules", "examples"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def test_the_readme_has_commands_to_run():
    commands = readme_commands()
    assert sum(why_not_run(c) is None for c in commands) >= 10, commands


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: c.split("#")[0].strip()[:60])
def test_readme_command_runs_as_typed(workdir, command):
    why = why_not_run(command)
    if why is not None:
        pytest.skip(f"{why}: {command}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(["bash", "-c", command], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr


def test_readme_python_blocks_are_valid_python():
    """They use the reader's own model and data (`stages`, `loss_fn`), so they are compiled, not run."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks
    for code in blocks:
        compile(code, "README.md", "exec")
