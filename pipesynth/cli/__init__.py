"""The `pipesynth` command line (typer).

Each feature keeps its commands in its own module here and registers them on
`app` with `@command`, which turns a PipesynthError into a one-line message
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperGroup

from pipesynth.errors import PipesynthError


class OneLineErrors(TyperGroup):
    """Usage errors (missing option, bad number...) as one `error: ...` line and exit 2, like ours."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # bare `pipesynth`: the help is the answer
                err.show()
                code = 0
            else:
                ctx = getattr(err, "ctx", None)
                where = f"{ctx.command_path}: " if ctx is not None else ""
                typer.echo(f"error: {where}{err.format_message()}", err=True)
                code = 2
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 1
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="pipesynth",
    cls=OneLineErrors,
    help="Plan, check, draw and run pipeline-parallel training schedules.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> typer.Exit:
    """Print `error: message` on stderr; raise the returned Exit (code 2)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def command(name: str | None = None, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`app.command`, plus one-line errors and exit 2 for bad input."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except PipesynthError as err:
                raise fail(str(err)) from None

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
