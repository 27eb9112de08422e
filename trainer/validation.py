"""
LeJEPA's validation loss, the part of `LeJepaTrainer.evaluate` that does not need the trainer: which images each
process evaluates (`validation_batches`, `validation_dataloader`), the fixed SIGReg seed, and how the loss terms of
the batches add up to `eval_loss`, `eval_prediction_loss` and `eval_sigreg_loss` (`validation_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from accelerate.utils import broadcast
from torch import nn
from torch.utils.data import DataLoader
from transformers import TrainingArguments
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Seed of SIGReg's directions in evaluation: a constant, not the step, so that every evaluation of every run uses the
# same directions.
EVAL_SIGREG_SEED = 2**31 - 1


def validation_batches(
    num_examples: int, global_batch_size: int, num_processes: int = 1, process_index: int = 0
) -> list[list[int]]:
    """
    The indices that process `process_index` evaluates, batch by batch: the validation set is cut into consecutive
    blocks of `global_batch_size` examples in index order (the last one may be smaller), and each block into
    `num_processes` consecutive parts of near-equal size, of which this process takes one. All processes thus make the
    same number of forward passes, and a block, the set over which SIGReg is computed, has the same images whatever
    the number of processes. A last block with fewer images than processes is left out (with a warning).

    Example:

    ```python
    >>> from trainer.validation import validation_batches
    >>> validation_batches(10, 4, num_processes=2, process_index=1)
    [[2, 3], [6, 7], [9]]
    ```
    """
    if global_batch_size < num_processes:
        raise ValueError(f"The global eval batch ({global_batch_size}) must have at least one image per process.")
    batches = []
    for start in range(0, num_examples, global_batch_size):
        block = range(start, min(start + global_batch_size, num_examples))
        if len(block) < num_processes:
            logger.warning(
                f"Leaving the last {len(block)} validation image(s) out of the evaluation: fewer than the "
                f"{num_processes} processes."
            )
            break
        size, extra = divmod(len(block), num_processes)
        first = block.start + process_index * size + min(process_index, extra)
        batches.append(list(range(first, first + size + (process_index < extra))))
    return batches


def validation_dataloader(dataset: Any, args: TrainingArguments, collate_fn: Callable | None) -> DataLoader:
    """
    The evaluation DataLoader of this process (`args.process_index` of `args.world_size`): its share of each block of
    `args.eval_batch_size * world_size` consecutive images of `dataset` (see `validation_batches`), meant not to be
    sharded again by Accelerate.
    """
    if dataset is None:
        raise ValueError("Evaluation needs an eval_dataset (run_pretraining.py: `--validation_split`, ...).")
    if not hasattr(dataset, "__len__"):
        raise ValueError(
            "LeJEPA's evaluation needs a validation set of known size, fixed across evaluations; take a fixed "
            "number of examples of a stream (`trainer.data.take_validation_examples`)."
        )
    world, rank = args.world_size, args.process_index
    return DataLoader(
        dataset,
        batch_sampler=validation_batches(len(dataset), args.eval_batch_size * world, world, rank),
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        pin_memory=args.dataloader_pin_memory,
    )


def broadcast_buffers(model: nn.Module) -> None:
    """
    Gives every process the buffers of process 0, in place. After a training step each process holds its own
    BatchNorm running statistics (DDP broadcasts those of process 0 at the start of the next one): evaluation uses
    process 0's, which are also the saved ones.
    """
    for buffer in model.buffers():
        broadcast(buffer, from_process=0)


def weighted_loss_terms(outputs: Any, num_images: int) -> torch.Tensor:
    """
    `(loss, prediction_loss, sigreg_loss, 1)` times `num_images`, in float64: summed over the batches (and
    processes), divided by the last entry, they give the means over images. The prediction term is a mean over this
    process's images, SIGReg that of the whole block: both weighted by the images of this process.
    """
    terms = torch.stack([outputs.loss, outputs.prediction_loss, outputs.sigreg_loss]).double()
    return torch.cat([terms, terms.new_ones(1)]) * num_images


def validation_metrics(totals: torch.Tensor, metric_key_prefix: str = "eval") -> tuple[dict[str, float], int]:
    """The metrics, means over images, from the sums of `weighted_loss_terms` over all batches and processes, and
    the number of images."""
    loss, prediction, sigreg, count = totals.tolist()
    metrics = {
        f"{metric_key_prefix}_loss": loss / count,
        f"{metric_key_prefix}_prediction_loss": prediction / count,
        f"{metric_key_prefix}_sigreg_loss": sigreg / count,
    }
    return metrics, int(count)


__all__ = ["EVAL_SIGREG_SEED", "validation_batches", "validation_dataloader"]
