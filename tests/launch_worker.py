"""Worker for tests/test_launch.py, run by `accelerate launch` on CPU processes (gloo).

Usage: python launch_worker.py OUTPUT_DIR [--backbone vit|resnet] [--max_steps N] [--resume] [--fsdp_on_cpu]
                                          [--probe_and_nan]

Trains a tiny LeJEPA model on fixed views (`distributed_worker.fixed_views`, the same in every run), saving a
checkpoint every 2 steps, then saves the final folder. Every process writes `rank{R}.json`: what is in effect, the
logged losses and a checksum of its parameters.

`--fsdp_on_cpu`: accelerate 1.15 never applies FSDP to CPU processes (`AcceleratorState` turns `ACCELERATE_USE_FSDP`
into `DistributedType.FSDP` only for GPU-like process groups; a gloo group stays `MULTI_CPU`, i.e. DDP). The worker
then marks its gloo group as a GPU-like one before the trainer creates its `Accelerator`, so that accelerate's own
FSDP path (auto-wrap from `_no_split_modules`, `fully_shard`, sharded checkpoints, `get_state_dict`) runs on CPU
exactly as on GPUs. Only that dispatch decision is overridden, here, in the test; the project's code is unchanged.
"""

import json
import os
import sys

import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType
from datasets import Dataset
from transformers import ResNetConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distributed_worker import collate, fixed_views  # noqa: E402

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining  # noqa: E402
from trainer import LeJepaTrainer, LeJepaTrainingArguments  # noqa: E402

NUM_IMAGES = 32
NAN_INDEX = 5  # with --probe_and_nan, the views of this image are NaN: one process sees a non-finite loss per epoch


def tiny_model(backbone: str) -> LeJepaForPreTraining:
    torch.manual_seed(0)
    if backbone == "vit":
        config = LeJepaConfig.from_preset("vit-tiny-test", projector_use_batch_norm=False, num_local_views=2)
    else:  # BatchNorm in the backbone and the projector: per-process statistics under DDP and FSDP alike
        backbone_config = ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8)
        config = LeJepaConfig(
            backbone_config=backbone_config, global_image_size=32, local_image_size=16, num_local_views=2,
            projector_hidden_size=32, projector_output_size=16, sigreg_num_slices=64,
        )
    return LeJepaForPreTraining(config)


def main() -> None:
    output_dir = sys.argv[1]
    options = sys.argv[2:]
    backbone = options[options.index("--backbone") + 1] if "--backbone" in options else "vit"
    max_steps = int(options[options.index("--max_steps") + 1]) if "--max_steps" in options else 4
    probe_and_nan = "--probe_and_nan" in options
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = LeJepaTrainingArguments(
        output_dir=output_dir, use_cpu=True, per_device_train_batch_size=16 // world, report_to="none", seed=0,
        data_seed=0, save_strategy="steps", save_steps=2, save_total_limit=None, logging_steps=1,
        dataloader_num_workers=0, max_steps=max_steps, learning_rate=1e-2, warmup_steps=0,
        lr_scheduler_type="constant", on_nonfinite_loss="skip" if probe_and_nan else "raise",
    )
    state = PartialState()
    if "--fsdp_on_cpu" in options and state.distributed_type == DistributedType.MULTI_CPU:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # see the module docstring

    def collate_views(examples: list[dict]) -> dict:
        batch = collate([fixed_views(e["index"]) for e in examples])
        if probe_and_nan:
            batch["labels"] = batch["index"] % 3
            bad = batch.pop("index") == NAN_INDEX
            batch["pixel_values"][bad] = float("nan")
        else:
            batch.pop("index")
        return batch

    dataset = Dataset.from_dict({"index": list(range(NUM_IMAGES))})
    dataset = dataset.with_transform(lambda batch: {"index": batch["index"]})
    trainer = LeJepaTrainer(
        model=tiny_model(backbone), args=args, train_dataset=dataset, data_collator=collate_views,
        probe_num_labels=3 if probe_and_nan else None,
    )
    trainer.train(resume_from_checkpoint=True if "--resume" in options else None)
    trainer.save_model()
    parameters = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in trainer.model.parameters()]
    rank = trainer.accelerator.process_index
    history = [
        {k: entry.get(k) for k in ("step", "loss", "sigreg_loss", "probe_accuracy", "nonfinite_steps")}
        for entry in trainer.state.log_history
        if "sigreg_loss" in entry
    ]
    result = {
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": trainer.accelerator.distributed_type.name,
        "launch_summary": trainer.launch_summary,
        "nonfinite_steps": trainer.nonfinite_steps,
        "checksum": float(sum(p.detach().double().sum() for p in parameters)),
        "history": history,
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    trainer.accelerator.end_training()  # as run_pretraining.py does: a gloo group left to the exit can abort it


if __name__ == "__main__":
    main()
