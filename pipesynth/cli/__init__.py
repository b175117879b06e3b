"""The `pipesynth` command line (typer).

Each feature keeps its commands in its own module here and registers them on
`app` with `@command`, which turns a PipesynthError into a one-line message
on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from pipesynth.errors import PipesynthError

app = typer.Typer(
    name="pipesynth",
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
        def run(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except PipesynthError as err:
                raise fail(str(err)) from None

        return app.command(name, **kwargs)(run)

    return wrap


def main() -> None:
    app()


# Importing the command modules registers their commands on `app`.
from pipesynth.cli import files, train  # noqa: E402,F401
