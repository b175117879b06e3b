"""What the executor raises: every message names the rank and what failed."""

from __future__ import annotations

from pipesynth.errors import PipesynthError


class PipelineError(PipesynthError):
    """The executor cannot go on; the message names the rank and what failed."""


class PipelineTimeoutError(PipelineError):
    """A peer did not deliver (or accept) a tensor in time, or failed."""


class NonFiniteLossError(PipelineError):
    """The loss of a step is NaN or infinite: the step's gradients must not be used."""


class PipelineStoppedError(PipelineError):
    """A peer failed on bad input and sent its error in a header: this rank raises it too."""

    def __init__(self, message: str, peer: int) -> None:
        super().__init__(message)
        self.peer = peer
