"""The `pipesynth` command line (typer).

Each feature keeps its commands in its own module here and registers them on
`app` with `@command`, which turns every error into one `error: ...` line on
stderr and an exit code (docs/design.md section 10): 2 for bad input, 1 for
a failure while running, 128 + the signal for SIGINT, SIGTERM and SIGHUP.
No traceback is shown unless `--debug` (anywhere on the command line) or
PIPESYNTH_DEBUG=1 asks for it. The app takes `-h` as well as `--help`,
`--version`, and `--log-level` for the library's `pipesynth.*` loggers
(configured here, never by the library). Help is click's plain layout: it
wraps to the terminal and never truncates an option name.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click
import typer
from typer.core import TyperGroup

from pipesynth.errors import PipesynthError, WriteError
from pipesynth.formats.files import keep_elsewhere, reason
from pipesynth.interrupts import exit_code_of, interruptible, signal_name
from pipesynth.version import __version__

#: What the command line itself handles: exits, usage errors, aborts.
PASS_THROUGH = (typer.Exit, typer.Abort, typer.TyperException, click.exceptions.Exit, click.ClickException, SystemExit)
#: Set to 1 for tracebacks with the error lines (as `--debug` does).
DEBUG_VARIABLE = "PIPESYNTH_DEBUG"
_debug_flag = False


def debugging() -> bool:
    """Whether `--debug` or PIPESYNTH_DEBUG asks for tracebacks."""
    return _debug_flag or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def _without_debug(args: list[str]) -> tuple[list[str], bool]:
    """`--debug` taken out of the arguments (before any `--`), and whether it was there."""
    cut = args.index("--") if "--" in args else len(args)
    kept = [a for a in args[:cut] if a != "--debug"] + args[cut:]
    return kept, len(kept) != len(args)


class OneLineErrors(TyperGroup):
    """Usage errors (missing option, bad number...) as one `error: ...` line and exit 2, like ours."""

    def main(self, args: Any = None, *rest: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        global _debug_flag
        args, asked = _without_debug(list(sys.argv[1:] if args is None else args))
        _debug_flag, before = asked, _debug_flag
        try:
            with interruptible():
                code = self._run(args, *rest, **kwargs)
        finally:
            _debug_flag = before
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args: list[str], *rest: Any, **kwargs: Any) -> int:
        try:
            code = super().main(args, *rest, standalone_mode=False, **kwargs)
        except typer.TyperException as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `pipesynth`: the help is the answer
                err.show()
                return 0
            ctx = getattr(err, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            echo_error(f"{where}{err.format_message()}")
            return 2
        except (typer.Abort, click.exceptions.Abort):
            echo_error("aborted")
            return 1
        except KeyboardInterrupt as err:  # between commands (while parsing, before a command runs)
            echo_error(f"interrupted ({signal_name(err)})")
            return exit_code_of(err)
        return code if isinstance(code, int) else 0


app = typer.Typer(
    name="pipesynth",
    cls=OneLineErrors,
    help="Plan, check, draw and run pipeline-parallel training schedules.\n\n"
    "Every command takes -h with an example; bad input exits 2 with one `error:` line (--debug or "
    f"{DEBUG_VARIABLE}=1 adds the traceback).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

LOG_LEVELS = ("debug", "info", "warning", "error")


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (tests and callers may swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: str) -> None:
    """Send the `pipesynth.*` loggers to stderr at `level` (messages alone; with names at debug)."""
    if level not in LOG_LEVELS:
        raise typer.BadParameter(f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s" if level == "debug" else "%(message)s"))
    logger = logging.getLogger("pipesynth")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"pipesynth {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=show_version, is_eager=True, help="Print the version and exit."
    ),
    log_level: str = typer.Option(
        "info", "--log-level", help=f"Library messages to show: {', '.join(LOG_LEVELS)}.", callback=configure_logging
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        help=f"Show the traceback before an error line. Taken anywhere on the command line; {DEBUG_VARIABLE}=1 "
        "does the same.",
    ),
) -> None:
    """Options of every command: version, library logging and tracebacks.

    `--debug` is listed here for the help alone: `OneLineErrors.main` takes it out of the arguments wherever
    it stands (after the command too), so its value here is always False.
    """


def echo_error(message: str) -> None:
    """`error: message` as one line on stderr, whatever characters the message holds."""
    line = " ".join(f"error: {message}".split("\n"))
    typer.echo(line.encode("utf-8", "backslashreplace").decode("utf-8"), err=True)


def emit(text: str, rescue_as: str | None = None) -> None:
    """Print `text` on stdout; if stdout cannot take it (a full disk, a closed pipe), raise WriteError,
    first saving the text as a file named after `rescue_as` in the temporary folder when given."""
    try:
        typer.echo(text, nl=False)
        sys.stdout.flush()
    except OSError as err:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout is gone: nothing more is printed there
        kept = "" if rescue_as is None else keep_elsewhere(rescue_as, text.encode(), [])
        raise WriteError(f"stdout: cannot write ({reason(err)}){kept}") from None


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on stderr; raise the returned Exit (code 2: bad input)."""
    echo_error(message)
    return typer.Exit(code)


def describe(err: BaseException) -> tuple[str, int]:
    """The error line and exit code for anything a command raises (docs/design.md section 10)."""
    if isinstance(err, PipesynthError):
        return str(err), err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return f"interrupted ({signal_name(err)})", exit_code_of(err)
    if isinstance(err, BrokenPipeError) and err.filename is None:
        return "stdout: cannot write (the reader closed the pipe)", 1
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror or err}", 1
    if isinstance(err, MemoryError):
        return "out of memory", 1
    hint = "" if debugging() else f"; {DEBUG_VARIABLE}=1 or --debug shows where"
    return f"internal error: {type(err).__name__}: {err}{hint}", 1


def command(name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command`, plus one error line and its exit code for everything the command raises."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except PASS_THROUGH:
                raise
            except BaseException as err:  # noqa: BLE001 - every error becomes one line
                message, code = describe(err)
                if debugging():
                    traceback.print_exc()
                    details = getattr(err, "details", "")
                    if details:
                        typer.echo(details, err=True)
                if isinstance(err, BrokenPipeError):  # stdout went away: nothing more can be printed there
                    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit
                raise fail(message, code) from None

        return app.command(name, **kwargs)(guarded)

    return wrap


def main() -> None:
    app(prog_name="pipesynth")


# Importing the command modules registers their commands on `app` (in `--help` order).
from pipesynth.cli import build  # noqa: E402,F401,I001
from pipesynth.cli import check  # noqa: E402,F401
from pipesynth.cli import solve  # noqa: E402,F401
from pipesynth.cli import interop  # noqa: E402,F401
from pipesynth.cli import run  # noqa: E402,F401
from pipesynth.cli import demo  # noqa: E402,F401
from pipesynth.cli import plan  # noqa: E402,F401
