"""pipesynth: pipeline-parallel training schedules, synthesized and checked.

The core (this package) never imports torch: the executor lives in
`pipesynth.runtime` and depends on the core, never the reverse. Importing
the package registers the readers of the schedule file's sections that
higher layers define (the `plan` object), so every reader checks them.
"""

import logging

from pipesynth.core.problem import Problem, make_problem, one_f_one_b_peak, parse_cap, placement_for
from pipesynth.core.schedule import Action, Metrics, Schedule
from pipesynth.core.simulate import Simulation, simulate
from pipesynth.core.validate import find_violations, validate
from pipesynth.errors import InfeasibleError, InvalidScheduleError, PipesynthError, ScheduleFormatError
from pipesynth.formats.schedule_json import load, load_problem, save
from pipesynth.plan import plan_file  # noqa: F401  (registers the `plan` section's reader: every load checks it)
from pipesynth.version import __version__

# The library logs to `pipesynth.*` loggers and configures none: an application (our CLI) does.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Action",
    "InfeasibleError",
    "InvalidScheduleError",
    "Metrics",
    "PipesynthError",
    "Problem",
    "Schedule",
    "ScheduleFormatError",
    "__version__",
    "Simulation",
    "find_violations",
    "load",
    "load_problem",
    "make_problem",
    "one_f_one_b_peak",
    "parse_cap",
    "placement_for",
    "save",
    "simulate",
    "validate",
]
