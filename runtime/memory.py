"""Measure the bytes of live saved activations on one rank, as they come and go.

Autograd's saved-tensor hooks see every tensor a forward pass keeps for its
backward; we wrap each in a `Held` handle whose deletion (autograd frees
saved tensors after B, the W queue after W) releases it. Bytes are counted
once per storage, however many views or saves share it, and parameters and
buffers (excluded storages) are not activations. The same handles wrap what
a deferred weight-gradient product keeps for W (see split.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


class Held:
    """A saved tensor the meter counts until this handle is deleted."""

    __slots__ = ("tensor", "_meter", "_key")

    def __init__(self, tensor: torch.Tensor, meter: ActivationMeter, key: int) -> None:
        self.tensor = tensor
        self._meter = meter
        self._key = key

    def __del__(self) -> None:
        self._meter._release(self._key)


class ActivationMeter:
    """Running and peak bytes of live saved activations (one per rank)."""

    def __init__(self) -> None:
        self._live: dict[int, list[int]] = {}  # storage pointer -> [bytes, handles]
        self._excluded: set[int] = set()
        self.level = 0
        self.peak = 0

    def exclude(self, tensors: Iterable[torch.Tensor]) -> None:
        """Never count these storages (the stage's parameters and buffers)."""
        self._excluded = {t.untyped_storage().data_ptr() for t in tensors}

    def reset_peak(self) -> None:
        self.peak = self.level

    def hold(self, tensor: torch.Tensor) -> Held | torch.Tensor:
        """Count `tensor` while the returned handle lives (tensors without storage pass through).

        Keeps `tensor.detach()`, never the tensor itself: as a pack hook it gets the live tensor,
        and for a node's own saved output (tanh, relu, exp) keeping that would close a cycle
        node -> saved variable -> handle -> tensor -> grad_fn = node through C++, which no gc
        collects. Only a backward without retain_graph breaks it, so a graph-split B (retained
        for W) leaked the stage's activations every step. Unpacking re-attaches the history.
        """
        tensor = tensor.detach()
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return tensor
        key = storage.data_ptr()
        if key in self._excluded or tensor.device.type == "meta":
            return tensor
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [storage.nbytes(), 0]
            self.level += entry[0]
            self.peak = max(self.peak, self.level)
        entry[1] += 1
        return Held(tensor, self, key)

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._live[key]
            self.level -= entry[0]

    @contextmanager
    def saving(self) -> Iterator[None]:
        """Count what autograd saves inside this block."""
        with torch.autograd.graph.saved_tensors_hooks(self.hold, unpack):
            yield


def unpack(obj: Held | torch.Tensor) -> torch.Tensor:
    return obj.tensor if isinstance(obj, Held) else obj
