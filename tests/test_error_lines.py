"""Whatever goes wrong inside a command is one `error:` line and an exit code; tracebacks only when asked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipesynth.cli.check as check
from pipesynth.cli import app
from pipesynth.construct import generate
from pipesynth.formats import schedule_json
from pipesynth.interrupts import Interrupted

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def ok(tmp_path):
    path = tmp_path / "ok.json"
    schedule_json.save(generate("1f1b", 2, 2), path)
    return path


def failing(monkeypatch, err: BaseException) -> None:
    def boom(schedule):
        raise err

    monkeypatch.setattr(check, "run_simulation", boom)


def test_an_unexpected_error_is_one_line_exit_1_without_a_traceback(ok, monkeypatch):
    failing(monkeypatch, ZeroDivisionError("boom"))
    result = run("simulate", ok)
    assert result.exit_code == 1
    assert result.stderr == "error: internal error: ZeroDivisionError: boom; PIPESYNTH_DEBUG=1 or --debug shows where\n"


@pytest.mark.parametrize("how", ["--debug first", "--debug last", "PIPESYNTH_DEBUG=1"])
def test_debug_shows_the_traceback_before_the_error_line(ok, monkeypatch, how):
    failing(monkeypatch, ZeroDivisionError("boom"))
    if how == "--debug first":
        result = run("--debug", "simulate", ok)
    elif how == "--debug last":
        result = run("simulate", ok, "--debug")
    else:
        result = run("simulate", ok, env={"PIPESYNTH_DEBUG": "1"})
    assert result.exit_code == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.splitlines()[-1] == "error: internal error: ZeroDivisionError: boom"


def test_debug_is_off_again_for_the_next_command(ok, monkeypatch):
    failing(monkeypatch, ZeroDivisionError("boom"))
    run("--debug", "simulate", ok)
    assert "Traceback" not in run("simulate", ok).stderr


@pytest.mark.parametrize(
    "err,code,line",
    [
        (KeyboardInterrupt(), 130, "error: interrupted (SIGINT)"),
        (Interrupted(signal.SIGTERM), 143, "error: interrupted (SIGTERM)"),
        (Interrupted(signal.SIGHUP), 129, "error: interrupted (SIGHUP)"),
        (MemoryError(), 1, "error: out of memory"),
        (PermissionError(13, "Permission denied", "/x"), 1, "error: /x: Permission denied"),
        (RecursionError("maximum recursion depth exceeded"), 1, "error: internal error: RecursionError: maximum"),
    ],
)
def test_signals_and_system_errors_are_one_line_with_their_exit_code(ok, monkeypatch, err, code, line):
    failing(monkeypatch, err)
    result = run("simulate", ok)
    assert result.exit_code == code
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(line), result.stderr


def test_validate_lists_twenty_violations_then_how_many_more(tmp_path):
    data = json.loads(schedule_json.dumps(generate("gpipe", 2, 30)))
    data["actions"][1] = []
    (tmp_path / "s.json").write_text(json.dumps(data))
    lines = run("validate", tmp_path / "s.json").stderr.splitlines()
    assert len(lines) == 21 and all(line.startswith("error: missing: ") for line in lines)
    assert lines[-1] == "error: missing: and 40 more passes are never run"


def test_a_closed_stdout_is_one_error_line_not_a_broken_pipe_traceback(ok):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipesynth", "validate", str(ok)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()  # the reader goes away before the command prints
    err = proc.stderr.read().decode()
    assert proc.wait() == 1
    assert err == "error: stdout: cannot write (the reader closed the pipe)\n"
