"""`LeJepaTrainingArguments`: `TrainingArguments` with the LeJEPA recipe as defaults and the LeJEPA options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

NONFINITE_LOSS_POLICIES = ("raise", "skip")


@dataclass
class LeJepaTrainingArguments(TrainingArguments):
    """
    [`~transformers.TrainingArguments`] with the LeJEPA recipe as defaults (AdamW, lr 5e-4, weight decay 0.05, linear
    warmup then cosine decay to lr / 1000, batches of 128 images, also in evaluation; DDP without
    `find_unused_parameters`: LeJEPA uses every parameter in every step; `do_train` on, so that `run_pretraining.py`
    trains unless given `--do_train False`; `dataloader_pin_memory` off where there is no accelerator, where pinning
    does nothing and PyTorch warns so at every DataLoader iterator) and the options that [`LeJepaTrainer`] reads from
    `self.args`, as `Seq2SeqTrainer` reads its generation options from `Seq2SeqTrainingArguments`. With plain
    `TrainingArguments`, `LeJepaTrainer` uses the defaults below.

    Args:
        online_probe (`bool`, *optional*, defaults to `True`):
            Train an online linear probe on the detached embeddings when the data has labels; logs `probe_accuracy`.
        probe_learning_rate (`float`, *optional*, defaults to 1e-3):
            Learning rate of the online probe's parameter group (no weight decay).
        on_nonfinite_loss (`str`, *optional*, defaults to `"raise"`):
            On a NaN or infinite loss: `"raise"` stops the run naming the step and the loss term, `"skip"` skips the
            optimizer step (parameters, optimizer state and BatchNorm statistics are left as they were).
        collapse_std_threshold (`float`, *optional*, defaults to 1e-3):
            A collapse warning is logged when the mean per-dimension standard deviation of the embeddings falls below.
        save_on_sigterm (`bool`, *optional*, defaults to `True`):
            On SIGTERM, save a checkpoint at the end of the current step and stop; the same command resumes.
        augment_on_device (`bool`, *optional*):
            Make the multi-crop views on the training device (`trainer.data.device_views.DeviceMultiCrop`): DataLoader
            workers then only decode and resize each image once (`DecodeResizeTransform`) and hand over `uint8`.
            `None` (the default) means on when training on an accelerator (CUDA, XPU, MPS, ...) and, on a CPU, on
            for global views of at most `CPU_DEVICE_VIEWS_MAX_SIZE` (96) pixels, where the batched pass is the cheaper
            one, and off for larger views.
        decode_on_device (`bool`, *optional*, defaults to `False`):
            With `augment_on_device`, decode JPEGs on the training device too (torchcodec, `pip install
            'lejepa-hf[gpu]'`; nvJPEG on CUDA): the DataLoader workers then only read each JPEG's bytes and header
            (`DecodeResizeTransform(decode_on_device=True)`). Other formats, CMYK JPEGs, rotated ones (EXIF) and JPEGs
            of more than 16 times the pixels the views need are still decoded by the workers. Off by default until
            measured on a GPU (`benchmarks/gpu.sh --end-to-end`).
    """

    output_dir: str = field(default="outputs/lejepa", metadata={"help": "Where checkpoints and the model go."})
    do_train: bool = field(
        default=True, metadata={"help": "Pretrain; `--do_train False --do_eval` evaluates `--model_name_or_path`."}
    )
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (5e-4 for ResNets)."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Linear warmup: steps, or a fraction if below 1."})
    lr_scheduler_type: str = field(default="cosine_with_min_lr", metadata={"help": "Cosine decay after warmup."})
    lr_scheduler_kwargs: dict | str = field(
        default_factory=lambda: {"min_lr_rate": 1e-3}, metadata={"help": "Decay to lr / 1000 by default."}
    )
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Images per device and step."})
    per_device_eval_batch_size: int = field(
        default=128,
        metadata={
            "help": "Validation images per device and forward pass. SIGReg's eval_loss is computed on blocks of "
            "this times the number of processes: keep that product fixed to compare runs."
        },
    )
    num_train_epochs: float = field(default=40.0, metadata={"help": "Epochs (ignored when max_steps > 0)."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss terms every this many steps."})
    save_strategy: str = field(default="steps", metadata={"help": "When to save checkpoints."})
    save_steps: float = field(default=500, metadata={"help": "Save a checkpoint every this many steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep this many checkpoints."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False: images are decoded late."})
    dataloader_num_workers: int = field(default=2, metadata={"help": "Data loading processes per device."})
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DDP's search for unused parameters, an extra pass over the autograd graph every step. Off: "
            "LeJEPA uses every parameter in every step (DINOv2's unused mask token is frozen)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh instead of resuming from the last checkpoint in output_dir."}
    )
    online_probe: bool = field(
        default=True, metadata={"help": "Train an online linear probe when the data has labels; logs its accuracy."}
    )
    probe_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the online probe."})
    on_nonfinite_loss: str = field(
        default="raise", metadata={"help": "On a NaN/Inf loss: 'raise' (stop, naming the step) or 'skip' the step."}
    )
    collapse_std_threshold: float = field(
        default=1e-3, metadata={"help": "Warn of a collapse below this mean per-dimension std of the embeddings."}
    )
    save_on_sigterm: bool = field(
        default=True, metadata={"help": "On SIGTERM: save a checkpoint at the end of the step, stop (exit code 143)."}
    )
    augment_on_device: bool | None = field(
        default=None,
        metadata={
            "help": "Cut and augment the views on the training device in one batched pass (workers only decode and "
            "resize). Default: on when training on an accelerator; on a CPU, on for global views of at most 96 px."
        },
    )
    decode_on_device: bool = field(
        default=False,
        metadata={
            "help": "With --augment_on_device, decode JPEGs on the training device too (torchcodec; nvJPEG on CUDA): "
            "the workers only read the files. Needs `pip install 'lejepa-hf[gpu]'`."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_nonfinite_policy(self.on_nonfinite_loss)
        if self.dataloader_pin_memory and not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # `TrainingArguments` does so only with `use_cpu`


def check_nonfinite_policy(policy: str) -> None:
    if policy not in NONFINITE_LOSS_POLICIES:
        raise ValueError(f"`on_nonfinite_loss` must be 'raise' or 'skip', got {policy!r}.")


# On a CPU, the largest global view side for which the views are made on the device by default. The batched pass
# costs this fraction of the CPU time of the DataLoader workers' views (1 thread, 1024 x 768 JPEGs): 0.10 at 32 px,
# 0.23 at 64, 0.39 at 96, 0.59 at 128, 1.27 at 224 (`benchmarks/bench_device_views.py --sections view-sizes`;
# BENCHMARKS.md, "Views on the device"). It runs in series with the model where the workers run beside it, hence a
# margin below the break-even point.
CPU_DEVICE_VIEWS_MAX_SIZE = 96


def resolve_augment_on_device(
    args: TrainingArguments, value: bool | None = None, global_image_size: int | None = None
) -> bool:
    """Whether the views are made on the device: `value` if given, else `args.augment_on_device` when set, else on an
    accelerator (anything but the CPU) always, and on a CPU when the global views are at most
    `CPU_DEVICE_VIEWS_MAX_SIZE` pixels (`global_image_size`; unknown means off)."""
    value = lejepa_option(args, "augment_on_device", value)
    if value is not None:
        return bool(value)
    if args.device.type != "cpu":
        return True
    return global_image_size is not None and global_image_size <= CPU_DEVICE_VIEWS_MAX_SIZE


def lejepa_option(args: TrainingArguments, name: str, value: Any = None) -> Any:
    """`value` if given, else `args.<name>` for `LeJepaTrainingArguments`, else the field's default (one definition
    of each default: the dataclass above)."""
    if value is not None:
        return value
    if hasattr(args, name):
        return getattr(args, name)
    return LeJepaTrainingArguments.__dataclass_fields__[name].default


__all__ = ["LeJepaTrainingArguments"]
