"""The torch.distributed executor (installed as `pipesynth.runtime`).

`pipesynth.runtime.torch_schedule(schedule, stages, loss_fn)`: a schedule with
torch.distributed.pipelining's schedule interface (runtime/torch_pipelining.py),
imported on first use.
"""


def __getattr__(name: str):
    if name == "torch_schedule":
        from pipesynth.runtime.torch_pipelining import torch_schedule

        return torch_schedule
    raise AttributeError(f"module 'pipesynth.runtime' has no attribute {name!r}")
