"""Read and write `pipesynth.schedule/1` files (docs/design.md section 5).

The reader checks types and names the field at fault; the rules a schedule
must follow (every pass once, placement, deadlock, cap) are the validator's.
Writing goes through a temporary file so a failed write leaves nothing half
written.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipesynth.core.problem import OPS, Problem, per_stage
from pipesynth.core.schedule import Action, Metrics, Schedule
from pipesynth.core.units import Units
from pipesynth.errors import PipesynthError, ScheduleFormatError
from pipesynth.formats.files import read_text, write_text_atomic

FORMAT = "pipesynth.schedule/1"


def _num(x: float) -> int | float:
    """Integral floats as ints, so files read like the ones people write."""
    return int(x) if float(x).is_integer() else x


def _nums(xs: tuple[float, ...] | list[float]) -> list[int | float]:
    return [_num(x) for x in xs]


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
        "comm": _num(problem.comm),
        "memory": {
            "activation": _nums(problem.activation),
            "kept_for_w": _nums(problem.kept_for_w),
            "cap": None if problem.cap is None else _nums(problem.cap),
        },
    }
    if problem.units is not None:
        out["units"] = {"time": problem.units.time, "memory": problem.units.memory}
    return out


def _units(data: dict[str, Any], path: str) -> Units | None:
    """The optional `units` object: what a time and a memory number mean (e.g. us, bytes)."""
    raw = _get(data, "units", path, dict, required=False)
    if raw is None:
        return None
    for key in raw:
        if key not in ("time", "memory"):
            raise ScheduleFormatError(f"{path}units.{key}: unknown key; expected time and memory")
    return Units(time=_get(raw, "time", f"{path}units.", str), memory=_get(raw, "memory", f"{path}units.", str))


def schedule_to_dict(schedule: Schedule) -> dict[str, Any]:
    def action(a: Action) -> dict[str, Any]:
        out: dict[str, Any] = {"op": a.op, "stage": a.stage, "mb": a.mb}
        if a.start is not None:
            out["start"] = _num(a.start)
        if a.end is not None:
            out["end"] = _num(a.end)
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
            "makespan": _num(m.makespan),
            "bubble_rate": m.bubble_rate,
            "peak_memory": _nums(m.peak_memory),
        }
    out["provenance"] = schedule.provenance
    return out


def _get(obj: dict[str, Any], key: str, path: str, kinds: type | tuple[type, ...], required: bool = True) -> Any:
    if key not in obj:
        if required:
            raise ScheduleFormatError(f"{path}{key}: missing")
        return None
    value = obj[key]
    if value is None and not required:
        return None
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ScheduleFormatError(f"{path}{key}: expected {_kind_name(kinds)}, got {value!r}")
    if not isinstance(value, kinds):
        raise ScheduleFormatError(f"{path}{key}: expected {_kind_name(kinds)}, got {value!r}")
    return value


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        list: "a list",
        dict: "an object",
    }
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in kinds))


NUMBER = (int, float)


def problem_from_dict(data: Any, path: str = "problem.") -> Problem:
    """A Problem from the `problem` object of a schedule file (or a problem file)."""
    if not isinstance(data, dict):
        raise ScheduleFormatError(f"{path.rstrip('.')}: expected an object")
    devices = _get(data, "devices", path, int)
    microbatches = _get(data, "microbatches", path, int)
    placement = _get(data, "placement", path, list)
    for s, d in enumerate(placement):
        if isinstance(d, bool) or not isinstance(d, int):
            raise ScheduleFormatError(f"{path}placement[{s}]: expected an integer device, got {d!r}")
    split = _get(data, "split_backward", path, bool, required=False)
    split = True if split is None else split
    cost = _get(data, "cost", path, dict)
    comm = _get(data, "comm", path, NUMBER, required=False) or 0
    memory = _get(data, "memory", path, dict, required=False) or {}
    stages = len(placement)

    def stage_values(obj: dict[str, Any], key: str, where: str, default: Any = None) -> tuple[float, ...]:
        value = obj.get(key, default)
        if value is None:
            raise ScheduleFormatError(f"{where}{key}: missing")
        try:
            return per_stage(value, stages, f"{where}{key}")
        except PipesynthError as err:
            raise ScheduleFormatError(str(err)) from None

    for key in cost:
        if key not in OPS:
            raise ScheduleFormatError(f"{path}cost.{key}: unknown pass; expected F, B or W")
    if not split and "W" in cost:
        raise ScheduleFormatError(f"{path}cost.W: must be absent when split_backward is false")
    cost_f = stage_values(cost, "F", f"{path}cost.")
    cost_b = stage_values(cost, "B", f"{path}cost.")
    cost_w = stage_values(cost, "W", f"{path}cost.") if split else tuple(0.0 for _ in placement)
    activation = stage_values(memory, "activation", f"{path}memory.", default=1)
    kept = stage_values(memory, "kept_for_w", f"{path}memory.", default=list(activation))
    cap_value = memory.get("cap")
    cap = None
    if cap_value is not None:
        try:
            cap = per_stage(cap_value, devices, f"{path}memory.cap", per="device")
        except PipesynthError as err:
            raise ScheduleFormatError(str(err)) from None
    units = _units(data, path)
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
            units=units,
        )
    except PipesynthError as err:
        raise ScheduleFormatError(f"{path}{err}") from None


def schedule_from_dict(data: Any) -> Schedule:
    if not isinstance(data, dict):
        raise ScheduleFormatError("file: expected a JSON object")
    fmt = _get(data, "format", "", str)
    if fmt != FORMAT:
        raise ScheduleFormatError(f"format: unsupported version {fmt!r}; this reader knows {FORMAT!r}")
    problem = problem_from_dict(_get(data, "problem", "", dict))
    raw_actions = _get(data, "actions", "", list)
    if len(raw_actions) != problem.devices:
        raise ScheduleFormatError(f"actions: expected one list per device ({problem.devices}), got {len(raw_actions)}")
    ops = problem.ops
    actions: list[list[Action]] = []
    for d, dev in enumerate(raw_actions):
        if not isinstance(dev, list):
            raise ScheduleFormatError(f"actions[{d}]: expected a list of actions")
        row = []
        for k, raw in enumerate(dev):
            where = f"actions[{d}][{k}]."
            if not isinstance(raw, dict):
                raise ScheduleFormatError(f"actions[{d}][{k}]: expected an object")
            op = _get(raw, "op", where, str)
            if op not in ops:
                raise ScheduleFormatError(f"{where}op: expected one of {', '.join(ops)}, got {op!r}")
            stage = _get(raw, "stage", where, int)
            mb = _get(raw, "mb", where, int)
            if not 0 <= stage < problem.stages:
                raise ScheduleFormatError(f"{where}stage: {stage} is out of range 0..{problem.stages - 1}")
            if not 0 <= mb < problem.microbatches:
                raise ScheduleFormatError(f"{where}mb: {mb} is out of range 0..{problem.microbatches - 1}")
            start = _get(raw, "start", where, NUMBER, required=False)
            end = _get(raw, "end", where, NUMBER, required=False)
            row.append(
                Action(op, stage, mb, None if start is None else float(start), None if end is None else float(end))
            )
        actions.append(row)
    metrics = None
    raw_metrics = _get(data, "metrics", "", dict, required=False)
    if raw_metrics is not None:
        peak = _get(raw_metrics, "peak_memory", "metrics.", list)
        for d, x in enumerate(peak):
            if isinstance(x, bool) or not isinstance(x, NUMBER):
                raise ScheduleFormatError(f"metrics.peak_memory[{d}]: expected a number, got {x!r}")
        metrics = Metrics(
            makespan=float(_get(raw_metrics, "makespan", "metrics.", NUMBER)),
            bubble_rate=float(_get(raw_metrics, "bubble_rate", "metrics.", NUMBER)),
            peak_memory=tuple(float(x) for x in peak),
        )
    name = _get(data, "name", "", str, required=False) or ""
    provenance = _get(data, "provenance", "", dict, required=False) or {}
    return Schedule(problem, actions, name=name, metrics=metrics, provenance=provenance)


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
        rows = [inner + json.dumps(v) for v in value]
        return "[\n" + ",\n".join(rows) + "\n" + indent + "]"
    return json.dumps(value)


def dumps(schedule: Schedule) -> str:
    """JSON with one action per line: diffable and still readable."""
    return _compact(schedule_to_dict(schedule)) + "\n"


def loads(text: str, source: str = "schedule") -> Schedule:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ScheduleFormatError(f"{source}: not valid JSON ({err.msg} at line {err.lineno})") from None
    return schedule_from_dict(data)


def load(path: str | os.PathLike[str]) -> Schedule:
    return loads(read_text(path), source=str(path))


def load_problem(path: str | os.PathLike[str]) -> Problem:
    """A problem file: the `problem` object alone, or a whole schedule file."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise ScheduleFormatError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(data, dict) and "format" in data:
        return schedule_from_dict(data).problem
    return problem_from_dict(data, path="")


def save(schedule: Schedule, path: str | os.PathLike[str]) -> None:
    write_text_atomic(path, dumps(schedule))


def save_problem(problem: Problem, path: str | os.PathLike[str]) -> None:
    write_text_atomic(path, _compact(problem_to_dict(problem)) + "\n")
