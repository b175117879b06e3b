"""Command-line conventions: --version, -h, torch's schedule names, help at 80 columns, logging, progress."""

import json
import logging
import re
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from pipesynth import __version__
from pipesynth.cli import app
from pipesynth.cli.solve import ProgressPrinter
from pipesynth.construct import GENERATORS, TORCH_NAMES, TORCH_WITHOUT_TWIN, get_generator
from pipesynth.solver import ProgressEvent

COMMANDS = sorted(get_command(app).commands)


def run(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def test_version_prints_the_package_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"pipesynth {__version__}"


@pytest.mark.parametrize("args", [["-h"], ["schedule", "-h"], ["solve", "-h"]])
def test_dash_h_is_help(args):
    result = run(*args)
    assert result.exit_code == 0 and result.stdout.startswith("Usage: pipesynth")


def test_the_help_names_debug_and_its_environment_variable():
    listing = " ".join(run("--help").stdout.split())
    assert "--debug Show the traceback before an error line" in listing
    assert "PIPESYNTH_DEBUG=1" in listing


def test_help_fits_80_columns_and_names_every_option_whole(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    group = get_command(app)
    for name in ["", *COMMANDS]:
        out = run(*([name] if name else []), "--help").stdout
        assert max(len(line) for line in out.splitlines()) <= 80, name
        assert "…" not in out
        params = (group.commands[name] if name else group).params
        for opt in (o for p in params for o in [*p.opts, *p.secondary_opts] if o.startswith("-")):
            assert opt in out, (name, opt)
    listing = run("--help").stdout
    for name in COMMANDS:  # every command's one-line summary whole, not cut with "..."
        line = next(line for line in listing.splitlines() if line.strip().startswith(name + " "))
        assert not line.rstrip().endswith("..."), line


@pytest.mark.parametrize("torch_name,ours", [(t, o) for t, o in TORCH_NAMES.items() if o in GENERATORS])
def test_torch_class_names_build_our_twin(torch_name, ours):
    mine = run("schedule", ours, "-d", 4, "-m", 8)
    theirs = run("schedule", torch_name, "-d", 4, "-m", 8)
    assert theirs.exit_code == 0, theirs.output
    assert json.loads(theirs.stdout)["name"] == ours
    assert theirs.stdout == mine.stdout
    assert get_generator(torch_name.lower()).name == ours  # any case


@pytest.mark.parametrize("torch_name", sorted(TORCH_WITHOUT_TWIN))
def test_torch_names_without_a_twin_say_what_to_use(torch_name):
    result = run("schedule", torch_name, "-d", 4, "-m", 8)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"torch's {torch_name} has no generator here; use " in result.stderr


def test_an_alias_is_one_entry_in_the_table(monkeypatch):
    monkeypatch.setitem(TORCH_NAMES, "ScheduleNewThing", "zb-h1")
    assert get_generator("ScheduleNewThing").name == "zb-h1"
    monkeypatch.setitem(TORCH_NAMES, "ScheduleNotYet", "not-yet")
    result = run("schedule", "ScheduleNotYet", "-d", 2, "-m", 2)
    assert result.exit_code == 2 and "torch's name for not-yet, which this version lacks" in result.stderr


@pytest.fixture
def pipesynth_logger():
    """The `pipesynth` logger as it was, restored after the test (the CLI reconfigures it)."""
    logger = logging.getLogger("pipesynth")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_library_logging_is_configured_by_the_cli_only(pipesynth_logger):
    quiet = run("schedule", "v-half", "-d", 3, "-m", 3)
    assert "candidate" not in quiet.stderr
    loud = run("--log-level", "debug", "schedule", "v-half", "-d", 3, "-m", 3)
    assert loud.exit_code == 0
    assert "pipesynth.construct.reorder: v-half: candidate repeat, makespan" in loud.stderr
    assert "wins, makespan" in loud.stderr
    bad = run("--log-level", "loud", "list")
    assert bad.exit_code == 2 and "expected one of debug, info, warning, error" in bad.stderr


def test_solver_progress_does_not_repeat_its_best_start(capsys):
    printer = ProgressPrinter()
    printer(ProgressEvent("hints", "best start: v-half", 1.0, makespan=57, bound=51))
    printer.last = 0.0  # well past the throttle
    printer(ProgressEvent("polish", "better schedule", 2.0, makespan=57, bound=51))  # CP-SAT's hint again
    printer.last = 0.0
    printer(ProgressEvent("polish", "better schedule", 3.0, makespan=56, bound=51))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "best start" in lines[0] and "best 56" in lines[1]


def test_training_progress_off_a_terminal_is_whole_log_lines(capsys, caplog):
    pytest.importorskip("torch")
    from pipesynth.runtime.train import StepProgress

    with caplog.at_level(logging.INFO, logger="pipesynth.runtime.train"):
        progress = StepProgress(3)
        for step in (1, 2, 3):
            progress.step(step, 4.0 - step, 0.5)
    assert "\r" not in capsys.readouterr().out
    assert [r.getMessage() for r in caplog.records] == [
        f"step {s}/3  loss {4.0 - s:.4f}  0.500 s/step" for s in (1, 2, 3)
    ]


def test_help_examples_name_files_that_exist():
    root = Path(__file__).resolve().parents[1]
    for name in COMMANDS:
        example = next(line for line in run(name, "-h").stdout.splitlines() if "Example: pipesynth" in line)
        for path in re.findall(r"\b(?:schedules|examples)/\S+", example):
            assert (root / path).exists(), (name, path)
