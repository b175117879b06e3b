"""Read and write `pipesynth.schedule/1` files (docs/design.md section 5).

The reader is strict: the JSON text is checked for size, nesting and
numbers before and while parsing (`json_text`), every object for unknown
keys (only `provenance` is free-form) and every field for its type and
range, naming the field at fault; then `load`/`loads` validate the schedule
against the rules, planned times and metrics included. Top-level sections
that a higher layer defines (`plan`: pipesynth/plan/plan_file.py) are read by
the checker that layer registers here (`register_section`), so this module
needs nothing above it and every reader checks them. The field helpers
(`expect_object`, `get_field`, ...) are public for those checkers. The JSON
Schema in schemas/ describes the same format for other tools. Writing goes
through a temporary file so a failed write leaves nothing half written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from pipesynth.core.problem import OPS, Problem, check_size, per_stage
from pipesynth.core.schedule import Action, Metrics, Schedule
from pipesynth.core.units import Units
from pipesynth.core.validate import validate as check_rules
from pipesynth.errors import PipesynthError, ScheduleFormatError
from pipesynth.formats.files import read_text, write_text_atomic
from pipesynth.formats.json_text import check_values, join, parse_json

FORMAT = "pipesynth.schedule/1"

#: The keys each object may have.
SCHEDULE_KEYS = ("format", "name", "problem", "actions", "metrics", "provenance", "plan")
PROBLEM_KEYS = ("devices", "microbatches", "placement", "split_backward", "cost", "comm", "memory", "units")
MEMORY_KEYS = ("activation", "kept_for_w", "cap")
UNITS_KEYS = ("time", "memory")
ACTION_KEYS = ("op", "stage", "mb", "start", "end")
METRICS_KEYS = ("makespan", "bubble_rate", "peak_memory")
#: Top-level sections a higher layer defines and reads (register_section); the format reserves their keys.
SECTION_KEYS = ("plan",)
#: Fewest characters one action takes in a file (`{"op":"F","stage":0,"mb":0}`): bounds the passes a file can list.
MIN_ACTION_BYTES = 27

#: key -> read(value, problem): the section's value, checked against the problem; raises
#: ScheduleFormatError naming the field (`plan.memory[2].static`).
SectionReader = Callable[[Any, Problem], Any]
_SECTION_READERS: dict[str, SectionReader] = {}


def register_section(key: str, read: SectionReader) -> None:
    """Have every reader of schedule files check the top-level section `key` with `read`.

    The layer that defines the section registers its reader when imported;
    `pipesynth/__init__.py` imports it, so it is registered before any file
    is read (docs/design.md section 5).
    """
    if key not in SECTION_KEYS:
        raise ValueError(f"{key!r} is not a section of {FORMAT}; sections: {', '.join(SECTION_KEYS)}")
    _SECTION_READERS[key] = read


def read_sections(data: dict[str, Any], problem: Problem) -> dict[str, Any]:
    """The sections present in a parsed file, each read by its registered reader."""
    return {key: read(data[key], problem) for key, read in _SECTION_READERS.items() if key in data}


def plain_number(x: float) -> int | float:
    """Integral floats as ints, so files read like the ones people write."""
    return int(x) if float(x).is_integer() else x


def _nums(xs: tuple[float, ...] | list[float]) -> list[int | float]:
    return [plain_number(x) for x in xs]


def problem_to_dict(problem: Problem) -> dict[str, Any]:
    cost: dict[str, Any] = {"F": _nums(problem.cost_f), "B": _nums(problem.cost_b)}
    if problem.split_backward:
        cost["W"] = _nums(problem.cost_w)
    out: dict[str, Any] = {
        "devices": problem.devices,
        "microbatches": problem.microbatches,
        "placement": list(problem.placement),
        "split_backward": problem.split_backward,
        "cost": cost,
        "comm": plain_number(problem.comm),
        "memory": {
            "activation": _nums(problem.activation),
            "kept_for_w": _nums(problem.kept_for_w),
            "cap": None if problem.cap is None else _nums(problem.cap),
        },
    }
    if problem.units is not None:
        out["units"] = {"time": problem.units.time, "memory": problem.units.memory}
    return out


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    def action(a: Action) -> dict[str, Any]:
        out: dict[str, Any] = {"op": a.op, "stage": a.stage, "mb": a.mb}
        if a.start is not None:
            out["start"] = plain_number(a.start)
        if a.end is not None:
            out["end"] = plain_number(a.end)
        return out

    out: dict[str, Any] = {
        "format": FORMAT,
        "name": schedule.name,
        "problem": problem_to_dict(schedule.problem),
        "actions": [[action(a) for a in dev] for dev in schedule.actions],
    }
    if schedule.metrics is not None:
        m = schedule.metrics
        out["metrics"] = {
            "makespan": plain_number(m.makespan),
            "bubble_rate": m.bubble_rate,
            "peak_memory": _nums(m.peak_memory),
        }
    out["provenance"] = schedule.provenance
    return out


def expect_object(value: Any, path: str, keys: tuple[str, ...], noun: str = "key") -> dict[str, Any]:
    """`value` as an object whose keys are all among `keys` (else the first unknown one is named)."""
    if not isinstance(value, dict):
        raise ScheduleFormatError(f"{path or 'file'}: expected an object, got {show_value(value)}")
    for key in value:
        if key not in keys:
            expected = ", ".join(keys[:-1]) + " or " + keys[-1]
            raise ScheduleFormatError(f"{join(path, key)}: unknown {noun}; expected {expected}")
    return value


def get_field(obj: dict[str, Any], key: str, path: str, kinds: type | tuple[type, ...], required: bool = True) -> Any:
    """`obj[key]` of one of `kinds` (bool is never an int here); None when optional and absent."""
    where = join(path, key)
    if key not in obj:
        if required:
            raise ScheduleFormatError(f"{where}: missing")
        return None
    value = obj[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise ScheduleFormatError(f"{where}: expected {_kind_name(kinds)}, got {show_value(value)}")
    return value


def show_value(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:36] + "..."


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "an object",
    }
    if float in kinds:  # an integer is a number too
        kinds = tuple(k for k in kinds if k is not int)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


NUMBER = (int, float)


def expect_integers(values: list[Any], path: str, what: str) -> None:
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ScheduleFormatError(f"{path}[{i}]: expected an integer {what}, got {show_value(v)}")


def problem_from_dict(data: Any, path: str = "problem") -> Problem:
    """A Problem from the `problem` object of a schedule file (or a problem file, `path=""`)."""
    data = expect_object(data, path, PROBLEM_KEYS)
    devices = get_field(data, "devices", path, int)
    microbatches = get_field(data, "microbatches", path, int)
    placement = get_field(data, "placement", path, list)
    expect_integers(placement, join(path, "placement"), "device")
    split = get_field(data, "split_backward", path, bool, required=False)
    split = True if split is None else split
    try:  # before any list is built per device or per pass
        check_size(devices, microbatches, len(placement), len(OPS) if split else 2)
    except PipesynthError as err:
        raise ScheduleFormatError(f"{join(path, str(err))}") from None
    cost = expect_object(get_field(data, "cost", path, dict), join(path, "cost"), OPS, noun="pass")
    comm = get_field(data, "comm", path, NUMBER, required=False) or 0
    raw_memory = get_field(data, "memory", path, dict, required=False) or {}
    memory = expect_object(raw_memory, join(path, "memory"), MEMORY_KEYS)
    stages = len(placement)

    def values(obj: dict[str, Any], key: str, where: str, count: int, per: str = "stage", default: Any = None):
        value = obj.get(key, default)
        if value is None:
            raise ScheduleFormatError(f"{join(where, key)}: missing")
        try:
            return per_stage(value, count, join(where, key), per=per)
        except PipesynthError as err:
            raise ScheduleFormatError(str(err)) from None

    if not split and "W" in cost:
        raise ScheduleFormatError(f"{join(path, 'cost.W')}: must be absent when split_backward is false")
    where = join(path, "cost")
    cost_f = values(cost, "F", where, stages)
    cost_b = values(cost, "B", where, stages)
    cost_w = values(cost, "W", where, stages) if split else tuple(0.0 for _ in placement)
    where = join(path, "memory")
    activation = values(memory, "activation", where, stages, default=1)
    kept = values(memory, "kept_for_w", where, stages, default=list(activation))
    cap = None if memory.get("cap") is None else values(memory, "cap", where, devices, per="device")
    try:
        return Problem(
            devices=devices,
            microbatches=microbatches,
            placement=tuple(placement),
            cost_f=cost_f,
            cost_b=cost_b,
            cost_w=cost_w,
            activation=activation,
            kept_for_w=kept,
            split_backward=split,
            comm=float(comm),
            cap=cap,
            units=_units(data, path),
        )
    except PipesynthError as err:
        raise ScheduleFormatError(join(path, str(err))) from None


def _units(data: dict[str, Any], path: str) -> Units | None:
    """The optional `units` object: what a time and a memory number mean (e.g. us, bytes)."""
    raw = get_field(data, "units", path, dict, required=False)
    if raw is None:
        return None
    where = join(path, "units")
    expect_object(raw, where, UNITS_KEYS)
    return Units(time=get_field(raw, "time", where, str), memory=get_field(raw, "memory", where, str))


def schedule_from_dict(data: Any, size: int | None = None) -> Schedule:
    """A Schedule from a parsed file, checked for form (not yet for the rules: see `loads`).

    `size`, the file's length in characters, bounds the passes it can list: a
    problem needing more is refused before anything is built for them.
    """
    if not isinstance(data, dict):
        raise ScheduleFormatError(f"file: expected an object, got {show_value(data)}")
    fmt = get_field(data, "format", "", str)
    if fmt != FORMAT:
        raise ScheduleFormatError(f"format: unsupported version {fmt!r}; this reader knows {FORMAT!r}")
    expect_object(data, "", SCHEDULE_KEYS)
    get_field(data, "plan", "", dict, required=False)  # free-form for now (docs/design.md section 5)
    problem = problem_from_dict(get_field(data, "problem", "", dict))
    raw_actions = get_field(data, "actions", "", list)
    if len(raw_actions) != problem.devices:
        raise ScheduleFormatError(f"actions: expected one list per device ({problem.devices}), got {len(raw_actions)}")
    passes = len(problem.ops) * problem.stages * problem.microbatches
    if size is not None and passes * MIN_ACTION_BYTES > size:
        raise ScheduleFormatError(
            f"problem.microbatches: {problem.microbatches} microbatches on {problem.stages} stages need "
            f"{passes} actions; a file of {size} characters holds at most {size // MIN_ACTION_BYTES}"
        )
    actions = [_device_actions(dev, d, problem) for d, dev in enumerate(raw_actions)]
    name = get_field(data, "name", "", str, required=False) or ""
    return Schedule(
        problem,
        actions,
        name=name,
        metrics=_metrics(data, problem),
        provenance=get_field(data, "provenance", "", dict, required=False) or {},
    )


def _device_actions(raw: Any, d: int, problem: Problem) -> list[Action]:
    if not isinstance(raw, list):
        raise ScheduleFormatError(f"actions[{d}]: expected a list of actions, got {show_value(raw)}")
    ops = problem.ops
    row = []
    for k, item in enumerate(raw):
        where = f"actions[{d}][{k}]"
        item = expect_object(item, where, ACTION_KEYS)
        op = get_field(item, "op", where, str)
        if op not in ops:
            raise ScheduleFormatError(f"{where}.op: expected one of {', '.join(ops)}, got {op!r}")
        stage = get_field(item, "stage", where, int)
        mb = get_field(item, "mb", where, int)
        if not 0 <= stage < problem.stages:
            raise ScheduleFormatError(f"{where}.stage: {stage} is out of range 0..{problem.stages - 1}")
        if not 0 <= mb < problem.microbatches:
            raise ScheduleFormatError(f"{where}.mb: {mb} is out of range 0..{problem.microbatches - 1}")
        start = get_field(item, "start", where, NUMBER, required=False)
        end = get_field(item, "end", where, NUMBER, required=False)
        row.append(Action(op, stage, mb, None if start is None else float(start), None if end is None else float(end)))
    return row


def _metrics(data: dict[str, Any], problem: Problem) -> Metrics | None:
    raw = get_field(data, "metrics", "", dict, required=False)
    if raw is None:
        return None
    expect_object(raw, "metrics", METRICS_KEYS)
    peak = get_field(raw, "peak_memory", "metrics", list)
    if len(peak) != problem.devices:
        raise ScheduleFormatError(
            f"metrics.peak_memory: expected {problem.devices} values (one per device), got {len(peak)}"
        )
    for d, x in enumerate(peak):
        if isinstance(x, bool) or not isinstance(x, NUMBER):
            raise ScheduleFormatError(f"metrics.peak_memory[{d}]: expected a number, got {show_value(x)}")
    return Metrics(
        makespan=float(get_field(raw, "makespan", "metrics", NUMBER)),
        bubble_rate=float(get_field(raw, "bubble_rate", "metrics", NUMBER)),
        peak_memory=tuple(float(x) for x in peak),
    )


def _compact(value: Any, indent: str = "") -> str:
    """Objects one key per line; lists of numbers and actions on one line each."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_compact(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        rows = [inner + _compact(v, inner) for v in value]
        return "[\n" + ",\n".join(rows) + "\n" + indent + "]"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        rows = [inner + json.dumps(v, allow_nan=False) for v in value]
        return "[\n" + ",\n".join(rows) + "\n" + indent + "]"
    return json.dumps(value, allow_nan=False)


def _writable(data: dict[str, Any]) -> dict[str, Any]:
    """`data` if the reader will take back its free text (name, units, provenance); else the field is named."""
    check_values({key: value for key, value in data.items() if key != "actions"}, "schedule")
    return data


def dumps(schedule: Schedule, sections: dict[str, Any] | None = None) -> str:
    """JSON with one action per line: diffable and still readable. `sections` (`{"plan": {...}}`, as
    their layer writes them) come last."""
    data = schedule_to_dict(schedule)
    for key, value in (sections or {}).items():
        if key not in SECTION_KEYS:
            raise ValueError(f"{key!r} is not a section of {FORMAT}; sections: {', '.join(SECTION_KEYS)}")
        data[key] = value
    return _compact(_writable(data)) + "\n"


def loads_with_sections(text: str, source: str = "schedule", validate: bool = True) -> tuple[Schedule, dict[str, Any]]:
    """A schedule from JSON text and its sections (`{"plan": PlanSection}` when it has a plan), checked for
    form and (unless `validate=False`) against every rule."""
    return _schedule_and_sections(parse_json(text, source), len(text), validate)


def _schedule_and_sections(data: Any, size: int, validate: bool) -> tuple[Schedule, dict[str, Any]]:
    schedule = schedule_from_dict(data, size=size)
    sections = read_sections(data, schedule.problem)
    if validate:
        check_rules(schedule)
    return schedule, sections


def loads(text: str, source: str = "schedule", validate: bool = True) -> Schedule:
    """`loads_with_sections`, the schedule alone (its sections are checked all the same)."""
    return loads_with_sections(text, source, validate)[0]


def load_with_sections(path: str | os.PathLike[str], validate: bool = True) -> tuple[Schedule, dict[str, Any]]:
    """`loads_with_sections` of a file (at most files.MAX_FILE_BYTES of UTF-8)."""
    return loads_with_sections(read_text(path), source=str(path), validate=validate)


def load(path: str | os.PathLike[str], validate: bool = True) -> Schedule:
    """`loads` of a file (at most files.MAX_FILE_BYTES of UTF-8)."""
    return load_with_sections(path, validate)[0]


def load_problem(path: str | os.PathLike[str]) -> Problem:
    """A problem file: the `problem` object alone, or a whole schedule file (which must be valid)."""
    return load_problem_with_sections(path)[0]


def load_problem_with_sections(path: str | os.PathLike[str]) -> tuple[Problem, dict[str, Any]]:
    """`load_problem`, with the file's registered sections (a plan) when it is a schedule file."""
    text = read_text(path)
    data = parse_json(text, str(path))
    if isinstance(data, dict) and {"format", "problem", "actions"} & set(data):
        schedule, sections = _schedule_and_sections(data, len(text), validate=True)
        return schedule.problem, sections
    return problem_from_dict(data, path=""), {}


def save(schedule: Schedule, path: str | os.PathLike[str], *, rescue: bool = False) -> None:
    """Write the schedule atomically (files.write_text_atomic; `rescue` keeps it elsewhere if that fails)."""
    write_text_atomic(path, dumps(schedule), rescue=rescue)


def save_problem(problem: Problem, path: str | os.PathLike[str], *, rescue: bool = False) -> None:
    write_text_atomic(path, _compact(_writable(problem_to_dict(problem))) + "\n", rescue=rescue)
