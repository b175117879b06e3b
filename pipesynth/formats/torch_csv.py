"""The compute-only CSV of torch.distributed.pipelining, both ways.

`_PipelineScheduleRuntime._load_csv` reads one row per rank; each cell is an
action `{stage}{op}{microbatch}` (`_Action.from_str`), op F (forward), I
(input-gradient backward, when the backward is split), W (weight gradient) or
B (fused backward); empty cells are idle steps. Our `B` is written `I` when
the problem splits the backward and `B` when it does not. Reading a CSV back
takes the placement from which row holds each stage; the costs and memory are
not in the CSV, so they come from the caller (defaults 1). Stage and
microbatch numbers are bounded by the cells before any is converted: every
stage and microbatch must appear in a cell, so a number at least the count
of cells is out of range (`0F99999999999` is refused, not allocated for).

torch's loader reads every line as a rank (a comment line is an error), so
the stage-to-rank placement the CSV assumes goes in a sidecar file next to
it (`placement_json`, `<name>.placement.json`), with the torchtitan settings
that must go with it (`torchtitan_settings`): torch infers the placement from
the CSV, but the stages must be built to match it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from pipesynth.core.problem import Op, PerStage, make_problem, placement_kind
from pipesynth.core.schedule import Action, Schedule
from pipesynth.core.simulate import from_order
from pipesynth.core.validate import find_violations
from pipesynth.errors import InvalidScheduleError, PipesynthError, ScheduleFormatError
from pipesynth.formats.files import read_text

CELL = re.compile(r"(\d+)([A-Z_]+?)(\d*)")
COMM_OPS = ("UNSHARD", "RESHARD", "REDUCE_GRAD", "SEND_F", "RECV_F", "SEND_B", "RECV_B", "OVERLAP_F_B")


def torch_op(op: Op, split_backward: bool) -> str:
    return "I" if op == "B" and split_backward else op


def to_torch_csv(schedule: Schedule) -> str:
    """One row per device, one `0F0`-style cell per action, in the device's order."""
    split = schedule.problem.split_backward
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for device_actions in schedule.actions:
        writer.writerow(f"{a.stage}{torch_op(a.op, split)}{a.mb}" for a in device_actions)
    return out.getvalue()


def placement_path(csv_path: str | os.PathLike[str]) -> Path:
    """Where the placement sidecar of a CSV goes: `x.csv` -> `x.placement.json`."""
    return Path(csv_path).with_suffix(".placement.json")


def placement_json(schedule: Schedule) -> str:
    """The stage -> rank placement a CSV export assumes, and what else a runtime needs to match it."""
    p = schedule.problem
    return (
        json.dumps(
            {
                "format": "pipesynth.placement/1",
                "schedule": schedule.name,
                "ranks": p.devices,
                "stages": p.stages,
                "microbatches": p.microbatches,
                "kind": placement_kind(p.placement, p.devices),
                "placement": list(p.placement),
                "stages_on_rank": [p.stages_on(r) for r in range(p.devices)],
                "split_backward": p.split_backward,
            },
            indent=2,
        )
        + "\n"
    )


def torchtitan_settings(schedule: Schedule, csv_path: str) -> list[str]:
    """The torchtitan options (and the stage placement) the exported CSV needs, one line each."""
    p = schedule.problem
    kind = placement_kind(p.placement, p.devices)
    lines = [
        f"--parallelism.pipeline_parallel_degree {p.devices}",
        f"--parallelism.pipeline_parallel_schedule_csv {csv_path}",
        f"--parallelism.pipeline_parallel_microbatch_size <local batch size / {p.microbatches}>"
        f"  ({p.microbatches} microbatches per step)",
        f"{p.stages} stages ({p.stages // p.devices} per rank): set pipeline_parallel_layers_per_stage so the model "
        f"cuts into exactly {p.stages}",
    ]
    if kind == "v":
        lines.append(
            "V placement: torchtitan builds the stages of a CSV schedule in loop style; build them with "
            "stage_ids_this_rank(..., style='v') (ranks hold stages "
            + ", ".join(f"{r}: {p.stages_on(r)}" for r in range(p.devices))
            + "), or run the schedule with pipesynth.runtime.torch_schedule, which checks the placement"
        )
    elif kind != "loop" and kind != "linear":
        lines.append(f"custom placement {list(p.placement)}: build each rank's stages as listed in the sidecar file")
    return lines


def parse_cell(text: str, where: str, cells: int | None = None) -> tuple[str, int, int]:
    """`1I0` -> ("I", 1, 0); anything but a compute action is an error naming `where`.

    With `cells` (how many the CSV holds), stage and microbatch numbers must be below it.
    """
    match = CELL.fullmatch(text)
    if match is None:
        raise ScheduleFormatError(f"{where}: cannot read {text!r}; expected stage, op, microbatch like 0F0 or 1I3")
    stage, op, mb = match.groups()
    if op in COMM_OPS:
        raise ScheduleFormatError(
            f"{where}: {text!r} is a {op} action; only compute-only CSVs (F, I, W, B cells) can be read"
        )
    if op not in ("F", "I", "W", "B"):
        raise ScheduleFormatError(f"{where}: unknown op {op!r} in {text!r}; expected F, I, W or B")
    if not mb:
        raise ScheduleFormatError(f"{where}: {text!r} has no microbatch number")
    if cells is not None:
        for what, digits in (("stage", stage), ("microbatch", mb)):
            if len(digits.lstrip("0")) > len(str(cells)) or int(digits) >= cells:
                raise ScheduleFormatError(
                    f"{where}: {what} {_short(digits)} is out of range 0..{cells - 1} "
                    f"(each {what} must appear in one of the CSV's {cells} actions)"
                )
    return op, int(stage), int(mb)


def _short(digits: str) -> str:
    return digits if len(digits) <= 24 else f"{digits[:20]}... ({len(digits)} digits)"


def from_torch_csv(
    text: str,
    *,
    source: str = "csv",
    name: str = "",
    cost: dict[str, PerStage] | None = None,
    comm: float = 0.0,
    activation: PerStage = 1.0,
    kept_for_w: PerStage | None = None,
) -> Schedule:
    """A validated, timed Schedule from a compute-only CSV (see the module docstring).

    Errors name the rank (row, from 0) and cell (from 0) at fault, as torch's
    own messages do.
    """
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        raise ScheduleFormatError(f"{source}: not a CSV file ({err})") from None
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()  # trailing blank lines
    if not rows:
        raise ScheduleFormatError(f"{source}: no rows; expected one row of actions per rank")
    order: list[list[tuple[Op, int, int]]] = []
    cells: list[list[int]] = []  # position in `order` -> cell index, for error messages
    placement: dict[int, int] = {}
    first: dict[str, tuple[int, int]] = {}  # op letter -> (rank, cell) of its first use
    count = sum(1 for row in rows for raw in row if raw.strip())
    for rank, row in enumerate(rows):
        order.append([])
        cells.append([])
        for k, raw in enumerate(row):
            if not raw.strip():
                continue
            where = f"{source}: rank {rank}, cell {k}"
            op, stage, mb = parse_cell(raw.strip(), where, count)
            held = placement.setdefault(stage, rank)
            if held != rank:
                raise ScheduleFormatError(f"{where}: stage {stage} is already on rank {held}; a stage runs on one rank")
            first.setdefault(op, (rank, k))
            order[rank].append(("B" if op == "I" else op, stage, mb))  # type: ignore[arg-type]
            cells[rank].append(k)
    split = "I" in first or "W" in first
    if split and "B" in first:
        (rank, k), (other_rank, other_k) = first["B"], first.get("I") or first["W"]
        raise ScheduleFormatError(
            f"{source}: rank {rank}, cell {k}: a fused backward (B) in a split schedule (I/W cells, e.g. at "
            f"rank {other_rank}, cell {other_k}); use I and W everywhere or B everywhere"
        )
    stages = max(placement) + 1
    missing = [s for s in range(stages) if s not in placement]
    if missing:
        raise ScheduleFormatError(f"{source}: stage {missing[0]} appears on no rank (stages 0..{stages - 1} expected)")
    empty = [r for r, actions in enumerate(order) if not actions]
    if empty:
        raise ScheduleFormatError(f"{source}: rank {empty[0]} has no actions; every rank must hold a stage")
    microbatches = max(mb for actions in order for _, _, mb in actions) + 1
    try:
        problem = make_problem(
            len(rows),
            microbatches,
            [placement[s] for s in range(stages)],
            cost=cost,
            comm=comm,
            activation=activation,
            kept_for_w=kept_for_w,
            split_backward=split,
        )
    except PipesynthError as err:
        raise ScheduleFormatError(f"{source}: {err}") from None
    plain = Schedule(problem, [[Action(*a) for a in dev] for dev in order], name=name)
    violations = find_violations(plain)
    if violations:
        raise InvalidScheduleError([f"{source}: {_cell_names(v, cells)}" for v in violations])
    return from_order(problem, order, name, source="torch-csv")


def load_torch_csv(path: str | os.PathLike[str], **options: Any) -> Schedule:
    """`from_torch_csv` on a file; options as there (the name defaults to the file's stem)."""
    options.setdefault("name", Path(path).stem)
    return from_torch_csv(read_text(path), source=str(path), **options)


def _cell_names(message: str, cells: list[list[int]]) -> str:
    """`actions[1][4]` (position among actions) -> `rank 1, cell 6` (CSV cell)."""

    def name(match: Any) -> str:
        rank, pos = int(match.group(1)), int(match.group(2))
        return f"rank {rank}, cell {cells[rank][pos]}"

    return re.sub(r"actions\[(\d+)\]\[(\d+)\]", name, message)
