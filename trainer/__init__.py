"""LeJEPA pretraining with `transformers.Trainer`: the trainer, multi-crop views and data loading."""

from . import data
from .arguments import LeJepaTrainingArguments, resolve_augment_on_device
from .callbacks import (
    GracefulShutdownCallback,
    StreamStateCallback,
    get_last_complete_checkpoint,
    is_complete_checkpoint,
)
from .data import *  # noqa: F403  (every public name of the data package, `data.__all__`, is one of `trainer`)
from .trainer import LeJepaTrainer, NonFiniteLossError, NoTrainingDataError
from .validation import EVAL_SIGREG_SEED

__all__ = [
    *data.__all__,
    "EVAL_SIGREG_SEED",
    "GracefulShutdownCallback",
    "LeJepaTrainer",
    "LeJepaTrainingArguments",
    "NonFiniteLossError",
    "NoTrainingDataError",
    "StreamStateCallback",
    "get_last_complete_checkpoint",
    "is_complete_checkpoint",
    "resolve_augment_on_device",
]
