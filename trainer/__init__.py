"""LeJEPA pretraining with `transformers.Trainer`: the trainer, multi-crop views and data loading."""

from .data import (
    BadSampleCounter,
    ImageDecodeError,
    MultiCropCollator,
    MultiCropConfig,
    MultiCropTransform,
    check_num_shards,
    decode_image,
    load_digits_dataset,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
)
from .trainer import LeJepaTrainer, NonFiniteLossError

__all__ = [
    "BadSampleCounter",
    "ImageDecodeError",
    "LeJepaTrainer",
    "MultiCropCollator",
    "MultiCropConfig",
    "MultiCropTransform",
    "NonFiniteLossError",
    "check_num_shards",
    "decode_image",
    "load_digits_dataset",
    "load_pretraining_dataset",
    "prepare_pretraining_dataset",
]
