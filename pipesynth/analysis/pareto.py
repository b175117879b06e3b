"""Memory against bubble: every schedule family on one model, and which ones are not beaten.

All schedules run the same model (docs/design.md section 2): `2D` chunks,
each with the given pass costs and one chunk unit of activation per
microbatch. A placement with k stages per device runs stages of 2/k chunks
(a V or two-chunk interleaved stage is one chunk; a linear stage is two:
twice the costs, 2 chunk units), so every figure is the one `pipesynth
schedule` prints for that stage size, and figures compare across
placements. Memory is also reported relative to 1F1B's peak on the same
model (2D chunk units).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pipesynth.construct import GENERATORS, get_generator, problem_for
from pipesynth.core.problem import PerStage, Problem, one_f_one_b_peak, parse_cap
from pipesynth.core.schedule import Schedule
from pipesynth.errors import InfeasibleError, PipesynthError
from pipesynth.formats.files import write_bytes_atomic

EPS = 1e-9


@dataclass(frozen=True)
class ParetoPoint:
    """One schedule's figures; `relative_memory` is its peak over 1F1B's peak."""

    name: str
    makespan: float
    bubble_rate: float
    peak_memory: float
    relative_memory: float
    frontier: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def point_of(schedule: Schedule, name: str | None = None) -> ParetoPoint:
    """A schedule's point; its peak relative to 1F1B's on the same problem (worst device)."""
    m = schedule.metrics
    if m is None:
        raise PipesynthError(f"{name or schedule.name}: the schedule has no metrics (simulate it first)")
    reference = one_f_one_b_peak(schedule.problem)
    relative = max(peak / ref for peak, ref in zip(m.peak_memory, reference) if ref > 0)
    return ParetoPoint(
        name=name or schedule.name,
        makespan=m.makespan,
        bubble_rate=m.bubble_rate,
        peak_memory=max(m.peak_memory),
        relative_memory=relative,
    )


def chunks_per_stage(name: str, devices: int, chunks: int = 2) -> float:
    """How many chunks of the same model one stage of generator `name` holds: 2 / (stages per device)."""
    return 2 * devices / problem_for(name, devices, 1, chunks=chunks).stages


def same_model_problem(
    name: str,
    devices: int,
    microbatches: int,
    cost: dict[str, float] | None = None,
    comm: float = 0.0,
    chunks: int = 2,
) -> Problem:
    """Generator `name`'s problem on the model of 2D chunks costing `cost` each (see module doc)."""
    cost = {"F": 1.0, "B": 1.0, "W": 1.0, **(cost or {})}
    k = chunks_per_stage(name, devices, chunks)
    per_stage: dict[str, PerStage] = {op: c * k for op, c in cost.items()}
    return problem_for(name, devices, microbatches, chunks=chunks, cost=per_stage, comm=comm, activation=k)


def same_model_schedules(
    devices: int,
    microbatches: int,
    cost: dict[str, float] | None = None,
    comm: float = 0.0,
    names: Iterable[str] | None = None,
    chunks: int = 2,
) -> tuple[list[Schedule], list[str]]:
    """Every registered generator's (or `names`') schedule on the same model, and a note per one that cannot run."""
    schedules, skipped = [], []
    for name in names if names is not None else GENERATORS:
        try:
            problem = same_model_problem(name, devices, microbatches, cost, comm, chunks)
            schedules.append(get_generator(name).build(problem))
        except PipesynthError as err:
            skipped.append(f"{name}: {err}")
    return schedules, skipped


def pareto_points(schedules: Iterable[Schedule]) -> list[ParetoPoint]:
    """The schedules' points, the frontier marked; other sources (a solver) can add points and mark again."""
    return mark_frontier([point_of(s) for s in schedules])


def mark_frontier(points: list[ParetoPoint]) -> list[ParetoPoint]:
    """The points, each marked whether no other has both less-or-equal memory and bubble, one strictly less."""

    def beaten(p: ParetoPoint) -> bool:
        return any(
            q.relative_memory <= p.relative_memory + EPS
            and q.bubble_rate <= p.bubble_rate + EPS
            and (q.relative_memory < p.relative_memory - EPS or q.bubble_rate < p.bubble_rate - EPS)
            for q in points
        )

    return [replace(p, frontier=not beaten(p)) for p in points]


def pareto_table(points: list[ParetoPoint]) -> str:
    """A text table sorted by memory (peak in chunk units); `*` marks the frontier."""
    rows = [("schedule", "peak/1F1B", "peak (chunk units)", "bubble rate", "makespan", "frontier")]
    for p in sorted(points, key=lambda p: (p.relative_memory, p.bubble_rate)):
        rows.append(
            (
                p.name,
                f"{p.relative_memory:.3f}",
                f"{p.peak_memory:g}",
                f"{p.bubble_rate:.4f}",
                f"{p.makespan:g}",
                "*" if p.frontier else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


#: Relative caps of `pipesynth pareto --solve`.
SOLVER_SWEEP = (0.3, 0.4, 0.5, 0.6, 0.75, 1.0)


def solver_points(
    devices: int,
    microbatches: int,
    cost: dict[str, float] | None = None,
    comm: float = 0.0,
    caps: Sequence[float] = SOLVER_SWEEP,
    time_limit: float = 10.0,
    workers: int = 2,
) -> tuple[list[ParetoPoint], list[str]]:
    """The solver's best schedule at each relative cap (`solve@0.5x`) on the V-shape model of the
    handcrafted points, and a note for each cap below the smallest feasible."""
    from pipesynth.solver import solve  # OR-Tools only when asked

    problem = same_model_problem("v-half", devices, microbatches, cost, comm)
    points, skipped = [], []
    for factor in caps:
        capped = problem.with_cap(parse_cap(f"{factor}x", problem))
        try:
            result = solve(capped, time_limit=time_limit, workers=workers)
        except InfeasibleError as err:
            skipped.append(f"solve@{factor:g}x: {err}")
            continue
        points.append(point_of(result.schedule, name=f"solve@{factor:g}x"))
    return points, skipped


def pareto_figure(points: list[ParetoPoint], path: str | Path, title: str = "", rescue: bool = False) -> Path:
    """Scatter plot of bubble rate against memory relative to 1F1B, to PNG or SVG; returns the path.

    Written atomically (`rescue`: kept elsewhere if that fails, see files.write_bytes_atomic).
    """
    target = Path(path)
    if target.suffix.lower() not in (".png", ".svg"):
        raise PipesynthError(f"{target}: picture format must be .png or .svg, got {target.suffix or 'no suffix'!r}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PipesynthError("pictures need matplotlib: pip install 'pipesynth[plot]'") from None
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    spots: dict[tuple[float, float], list[ParetoPoint]] = {}
    for p in points:  # schedules with the same figures share one dot and one label
        spots.setdefault((round(p.relative_memory, 6), round(p.bubble_rate, 6)), []).append(p)
    for (x, y), same in spots.items():
        ax.scatter(x, y, color="#2f6eb5" if same[0].frontier else "#999999", zorder=2)
        label = ", ".join(p.name for p in same)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted((p for p in points if p.frontier), key=lambda p: p.relative_memory)
    ax.plot([p.relative_memory for p in front], [p.bubble_rate for p in front], color="#2f6eb5", lw=1, zorder=1)
    ax.set_xlabel("peak memory / 1F1B's peak")
    ax.set_ylabel("bubble rate")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    picture = io.BytesIO()
    fig.savefig(picture, format=target.suffix.lower().lstrip("."))
    return write_bytes_atomic(target, picture.getvalue(), rescue=rescue)
