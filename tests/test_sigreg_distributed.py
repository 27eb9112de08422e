"""SIGReg on 2 CPU processes (gloo, DistributedDataParallel) against 1 process on the concatenated batch."""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from modeling_lejepa.sigreg import SIGReg

WORLD_SIZE = 2
NUM_SLICES = 64
STEP = 7  # the global training step: seeds the directions, the same on every process
INPUT_SIZE, OUTPUT_SIZE = 12, 8
# samples on rank 0 and rank 1; the single process sees their concatenation
SPLITS = {"equal": (24, 24), "unequal": (31, 17)}
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# 2 processes vs 1: float32 sums in another order; in float64 SIGReg computes in float64 (no cast to float32)
TOLERANCES = {"float32": 1e-5, "float64": 1e-9}
TIMEOUT_S = 180


def fixed_inputs(num_samples: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The global batch, identical in every process."""
    generator = torch.Generator().manual_seed(num_samples)
    return (torch.randn(num_samples, INPUT_SIZE, generator=generator, dtype=torch.float64) * 2 + 0.5).to(dtype)


def fixed_model(dtype: torch.dtype = torch.float32) -> nn.Linear:
    """A small model whose output SIGReg regularises, initialised identically in every process."""
    torch.manual_seed(0)
    return nn.Linear(INPUT_SIZE, OUTPUT_SIZE).to(dtype)


def sigreg_value_and_gradients(model: nn.Module, inputs: torch.Tensor, gather_distributed: bool = True) -> dict:
    value = SIGReg(num_slices=NUM_SLICES, gather_distributed=gather_distributed)(model(inputs), step=STEP)
    value.backward()
    parameters = model.module if isinstance(model, DistributedDataParallel) else model
    return {"value": value.detach(), "grads": {n: p.grad.clone() for n, p in parameters.named_parameters()}}


def _worker(rank: int, init_file: str, output_dir: str) -> None:
    """Each rank takes its slice of every global batch, runs SIGReg under DDP and saves the value and gradients."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        results = {}
        for name, sizes in SPLITS.items():
            start = sum(sizes[:rank])
            for dtype_name, dtype in DTYPES.items():
                local_inputs = fixed_inputs(sum(sizes), dtype)[start : start + sizes[rank]]
                model = DistributedDataParallel(fixed_model(dtype))
                results[name, dtype_name] = sigreg_value_and_gradients(model, local_inputs)
            # this process's statistic alone, as evaluation code asks for it
            local_inputs = fixed_inputs(sum(sizes))[start : start + sizes[rank]]
            results[name, "local"] = sigreg_value_and_gradients(fixed_model(), local_inputs, gather_distributed=False)
        torch.save(results, os.path.join(output_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory) -> list[dict]:
    """The per-rank results of one 2-process run (spawned once for the whole module)."""
    directory = tmp_path_factory.mktemp("sigreg_distributed")
    # fork where available: the children inherit the imported modules (spawning re-imports transformers in each)
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(
        _worker,
        args=(str(directory / "init"), str(directory)),
        nprocs=WORLD_SIZE,
        join=False,
        start_method=start_method,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD_SIZE} SIGReg processes did not finish within {TIMEOUT_S} s")
    return [torch.load(directory / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("dtype_name", sorted(DTYPES))
@pytest.mark.parametrize("split", sorted(SPLITS))
def test_two_processes_match_one_process(distributed_results, split, dtype_name):
    dtype, tolerance = DTYPES[dtype_name], TOLERANCES[dtype_name]
    expected = sigreg_value_and_gradients(fixed_model(dtype), fixed_inputs(sum(SPLITS[split]), dtype))
    assert expected["value"] > 0 and expected["value"].dtype == dtype
    for rank_results in distributed_results:
        got = rank_results[split, dtype_name]
        # the value: the ECF is averaged over processes (weighted by their batch sizes) and N is the global batch
        torch.testing.assert_close(got["value"], expected["value"], rtol=tolerance, atol=0)
        # the parameter gradients after DDP's mean over ranks
        assert got["grads"].keys() == expected["grads"].keys()
        for name, grad in expected["grads"].items():
            assert grad.abs().max() > 0
            torch.testing.assert_close(
                got["grads"][name], grad, rtol=tolerance, atol=tolerance * grad.abs().max().item()
            )


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_gather_distributed_false_is_the_local_statistic(distributed_results, split):
    sizes = SPLITS[split]
    for rank, rank_results in enumerate(distributed_results):
        start = sum(sizes[:rank])
        local = sigreg_value_and_gradients(fixed_model(), fixed_inputs(sum(sizes))[start : start + sizes[rank]])
        torch.testing.assert_close(rank_results[split, "local"]["value"], local["value"], rtol=1e-6, atol=0)


def test_one_rank_alone_is_not_the_global_value(distributed_results):
    # guards the test itself: each rank's half on its own gives a different statistic than the global batch
    sizes = SPLITS["equal"]
    half = sigreg_value_and_gradients(fixed_model(), fixed_inputs(sum(sizes))[: sizes[0]])
    assert not torch.allclose(half["value"], distributed_results[0]["equal", "float32"]["value"], rtol=1e-3)
