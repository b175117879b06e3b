"""Exceptions with messages meant for users: the CLI prints them in one line.

`exit_code` is the CLI's exit status for the error: 2 for bad input (the
default), 1 for a failure while running (docs/design.md section 10).
"""


class PipesynthError(Exception):
    """Bad input or an impossible request (the CLI exits 2 with the message)."""

    exit_code = 2


class ScheduleFormatError(PipesynthError):
    """A schedule or problem file that does not follow `pipesynth.schedule/1`."""


class InvalidScheduleError(PipesynthError):
    """A well-formed schedule that breaks a rule (missing pass, deadlock, cap...)."""

    def __init__(self, violations: list[str]):
        self.violations = violations
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        super().__init__(violations[0] + more)


class InfeasibleError(PipesynthError):
    """No schedule satisfies the request (e.g. a memory cap below the minimum)."""


class WriteError(PipesynthError):
    """An output could not be written once the work was done (exit 1); the message says where it was saved."""

    exit_code = 1
