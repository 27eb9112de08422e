"""
What `LeJepaTrainer` saves for the Hub and uploads: the training arguments as JSON instead of a pickle, and the
intermediate pushes of `hub_strategy="every_save"` with the model's code and card, never a pickle.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

import transformers.trainer
from transformers import TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, SaveStrategy
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, PushInProgress

if TYPE_CHECKING:
    from .trainer import LeJepaTrainer

TRAINING_ARGS_JSON_NAME = "training_args.json"  # instead of Trainer's pickled `training_args.bin`
# Never uploaded: Trainer's private files, the checkpoints (optimizer, scheduler and RNG states are pickles that only
# resuming needs) and any pickle.
HUB_IGNORE_PATTERNS = ["_*", f"{PREFIX_CHECKPOINT_DIR}-*", "*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle"]
# hub_strategy values that upload checkpoint folders, with their pickled optimizer, scheduler and RNG states
_CHECKPOINT_HUB_STRATEGIES = (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS)


def check_hub_strategy(args: TrainingArguments | None) -> None:
    """Refuses, before Trainer creates the Hub repository, a `hub_strategy` that would upload checkpoint folders."""
    if args is not None and args.push_to_hub and args.hub_strategy in _CHECKPOINT_HUB_STRATEGIES:
        raise ValueError(
            f"`hub_strategy={args.hub_strategy.value!r}` uploads checkpoint folders, whose optimizer, "
            "scheduler and RNG states are pickles that only resuming needs. Use `--hub_strategy every_save` (the "
            "model, its code and card at every save) or `end`, and keep the checkpoints local."
        )


def write_training_args(args: TrainingArguments, folder: str) -> None:
    """Writes `args` into `folder` as `training_args.json`, removing Trainer's pickled `training_args.bin`."""
    pickled = os.path.join(folder, TRAINING_ARGS_NAME)
    if os.path.isfile(pickled):
        os.remove(pickled)
    with open(os.path.join(folder, TRAINING_ARGS_JSON_NAME), "w", encoding="utf-8") as f:
        f.write(args.to_json_string())


def push_from_checkpoint(trainer: LeJepaTrainer, checkpoint_folder: str) -> None:
    """
    An intermediate push (`hub_strategy="every_save"`) of `trainer`: the checkpoint's model (config, weights, the
    remote code), the image processor, the training arguments as JSON and the LeJEPA model card, and never a pickle.
    Trainer's own version copies config and weights only (no custom code, so the revision would not load with
    `trust_remote_code=True`) and pickles the training arguments just before uploading.
    """
    args = trainer.args
    if not trainer.is_world_process_zero() or args.hub_strategy == HubStrategy.END:
        return
    if not args.hub_always_push and trainer.push_in_progress is not None and not trainer.push_in_progress.is_done():
        return
    trainer.callback_handler.on_push_begin(args, trainer.state, trainer.control)
    output_dir = args.output_dir
    for name in os.listdir(checkpoint_folder):
        if name.endswith((".py", ".safetensors")) or name in (CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME):
            shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(output_dir, name))
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(output_dir)
    write_training_args(args, output_dir)
    trainer.create_model_card()
    if args.save_strategy == SaveStrategy.STEPS:
        commit_message = f"Training in progress, step {trainer.state.global_step}"
    else:
        commit_message = f"Training in progress, epoch {int(trainer.state.epoch)}"
    job = transformers.trainer.hf_api().upload_folder(
        repo_id=trainer.hub_model_id,
        folder_path=output_dir,
        commit_message=commit_message,
        token=args.hub_token,
        run_as_future=True,
        ignore_patterns=HUB_IGNORE_PATTERNS,
        revision=args.hub_revision,
    )
    if trainer.push_in_progress is None or trainer.push_in_progress.is_done():
        trainer.push_in_progress = PushInProgress([job])
    else:
        trainer.push_in_progress.jobs.append(job)


__all__ = ["HUB_IGNORE_PATTERNS", "TRAINING_ARGS_JSON_NAME", "push_from_checkpoint", "write_training_args"]
