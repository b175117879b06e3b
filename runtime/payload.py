"""What crosses a stage boundary: a stage's output taken apart into tensors and a picklable layout.

A stage returns a tensor, a tuple/list or a dict of them (nested, with
constants such as None, numbers or strings among them); the next stage is
called with it as its one argument (a tensor), its positional arguments (a
tuple/list) or its keyword arguments (a dict). `flatten` separates the
tensors, which travel as P2P messages, from the layout (`Layout`), which
travels once per step in the boundary's header (docs/design.md section 7);
constants are part of the layout. `TensorSpec.grad` says which tensors carry
a gradient back: floating point and requiring grad.

`split_batch` cuts a step's inputs into microbatches (tensors whose first
dimension is the batch are cut, others go to every microbatch), and
`merge` puts the last stage's per-microbatch outputs back together.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import torch

from pipesynth.runtime.errors import PipelineError

CONSTANTS = (type(None), bool, int, float, str)
HEADER_BYTES = 16384  # a boundary's header: its layout and tensor specs, pickled, or an error


@dataclass(frozen=True)
class Slot:
    """Where the `index`-th tensor of a flattened output goes back."""

    index: int


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one tensor crossing a boundary, and whether a gradient comes back for it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    grad: bool


@dataclass(frozen=True)
class Layout:
    """A stage output without its tensors: the tree (with Slots for tensors) and each tensor's spec."""

    tree: Any
    specs: tuple[TensorSpec, ...]

    @property
    def grad_indices(self) -> list[int]:
        return [i for i, spec in enumerate(self.specs) if spec.grad]


def flatten(value: Any, where: str) -> tuple[list[torch.Tensor], Layout]:
    """The tensors of a stage output, in a fixed order, and its layout; PipelineError naming `where` if
    the output holds anything but tensors, tuples/lists, dicts and constants."""
    tensors: list[torch.Tensor] = []
    tree = _walk(value, "output", tensors, where)
    specs = tuple(TensorSpec(tuple(t.shape), t.dtype, t.is_floating_point() and t.requires_grad) for t in tensors)
    return tensors, Layout(tree, specs)


# The recursions are module functions, not closures: a closure that calls itself is a reference cycle,
# which would keep the tensors it saw (and their autograd graph) alive until the garbage collector runs.


def _walk(obj: Any, path: str, tensors: list[torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return Slot(len(tensors) - 1)
    if isinstance(obj, (tuple, list)):
        items = [_walk(item, f"{path}[{i}]", tensors, where) for i, item in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, dict):  # a ModelOutput is a dict too; it travels as a plain dict
        return {key: _walk(item, f"{path}[{key!r}]", tensors, where) for key, item in obj.items()}
    if isinstance(obj, CONSTANTS):
        return obj
    raise PipelineError(
        f"{where} returns a {type(obj).__name__} at {path}; a stage returns a tensor, a tuple/list or a "
        "dict of tensors (constants such as None, numbers and strings may sit among them)"
    )


def unflatten(layout: Layout, tensors: list[torch.Tensor]) -> Any:
    """The stage output `flatten` took apart, with `tensors` in its slots."""
    return _build(layout.tree, tensors)


def _build(node: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(node, Slot):
        return tensors[node.index]
    if isinstance(node, tuple):
        return tuple(_build(item, tensors) for item in node)
    if isinstance(node, list):
        return [_build(item, tensors) for item in node]
    if isinstance(node, dict):
        return {key: _build(item, tensors) for key, item in node.items()}
    return node


def call(module: torch.nn.Module, value: Any) -> Any:
    """Call the next stage with a previous stage's output: one tensor, positional or keyword arguments."""
    if isinstance(value, dict):
        return module(**value)
    if isinstance(value, (tuple, list)):
        return module(*value)
    return module(value)


def encode_header(content: Layout | str, where: str, device: torch.device) -> torch.Tensor:
    """A fixed-size uint8 tensor holding a layout, or an error message (a str) for the peer to raise."""
    data = pickle.dumps(content)
    if len(data) > HEADER_BYTES - 8:
        raise PipelineError(
            f"{where}: its output layout takes {len(data)} bytes to describe (at most {HEADER_BYTES - 8}): "
            "too many tensors or large constants"
        )
    buf = torch.zeros(HEADER_BYTES, dtype=torch.uint8)
    buf[:8] = torch.tensor(list(len(data).to_bytes(8, "little")), dtype=torch.uint8)
    buf[8 : 8 + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return buf.to(device)


def header_buffer(device: torch.device) -> torch.Tensor:
    return torch.empty(HEADER_BYTES, dtype=torch.uint8, device=device)


def decode_header(buf: torch.Tensor) -> Layout | str:
    raw = bytes(buf.cpu().tolist()[:8])
    size = int.from_bytes(raw, "little")
    return pickle.loads(bytes(buf[8 : 8 + size].cpu().numpy().tobytes()))


def first_batch_size(inputs: tuple, kwargs: dict) -> int | None:
    """The batch size of a step: the first dimension of its first tensor (positional, then keyword)."""
    for value in (*inputs, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def split_batch(value: Any, batch: int | None, m: int, device: torch.device, name: str) -> list[Any]:
    """`value` cut into `m` microbatches: tensors whose first dimension is `batch` are cut (each piece a
    copy on `device`, so its memory is its own), other tensors and constants go to every microbatch.
    `batch` None cuts every tensor. PipelineError naming the argument when a cut is uneven."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or (batch is not None and value.shape[0] != batch):
            whole = value.to(device)
            return [whole] * m
        if value.shape[0] % m:
            raise PipelineError(f"{name}: a batch of {value.shape[0]} does not split into {m} equal microbatches")
        return [c.to(device, copy=True) for c in value.chunk(m)]
    if isinstance(value, (tuple, list)):
        parts = [split_batch(item, batch, m, device, f"{name}[{i}]") for i, item in enumerate(value)]
        return [type(value)(p[j] for p in parts) for j in range(m)]
    if isinstance(value, dict):
        cut = {key: split_batch(item, batch, m, device, f"{name}[{key!r}]") for key, item in value.items()}
        return [{key: p[j] for key, p in cut.items()} for j in range(m)]
    return [value] * m


def merge(chunks: list[Any]) -> Any:
    """Per-microbatch outputs back into one: tensors concatenated on dim 0 (0-dim ones stacked)."""
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(chunks) if first.dim() == 0 else torch.cat(chunks)
    if isinstance(first, (tuple, list)):
        return type(first)(merge([c[i] for c in chunks]) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: merge([c[key] for c in chunks]) for key in first}
    return first
