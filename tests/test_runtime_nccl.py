"""The executor on NCCL, one GPU per rank: exact gradients, and a hung peer ends the run.

Skipped on machines with fewer than two GPUs (CI has none): run
`python -m pytest tests/test_runtime_nccl.py` on a multi-GPU machine.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from runtime_workers import compare_with_reference, faulty_run  # noqa: E402

from pipesynth.construct import GENERATORS, generate  # noqa: E402
from pipesynth.formats.schedule_json import dumps  # noqa: E402
from pipesynth.runtime.launch import LaunchError, launch  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (NCCL, one per rank)")

TOL = 1e-10  # float64; GPU and CPU kernels may round differently, never by this much


def test_every_schedule_matches_single_process_gradients_on_nccl():
    texts = [dumps(generate(name, 2, 4)) for name in sorted(GENERATORS)]
    per_rank = launch(compare_with_reference, 2, texts, device="cuda", timeout=60)
    for rank, results in enumerate(per_rank):
        for name, loss_err, grad_err, hook_ok in results:
            assert loss_err <= TOL, f"{name}: loss differs by {loss_err} on rank {rank}"
            assert grad_err <= TOL, f"{name}: a gradient differs by {grad_err} on rank {rank}"
            assert hook_ok, f"{name}: grads_ready fired early, twice or not at all on rank {rank}"


def test_a_hung_peer_ends_an_nccl_run_with_the_watchdog_message():
    # Rank 0's stream-ordered wait for rank 1's gradient returns at once; the watchdog ends it.
    text = dumps(generate("1f1b", 2, 2))
    with pytest.raises(LaunchError, match=r"rank 0 failed: PipelineTimeoutError: rank 0, .* with rank 1 timed out"):
        launch(faulty_run, 2, text, "stall", 3.0, device="cuda", timeout=30)
