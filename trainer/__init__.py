"""LeJEPA pretraining with `transformers.Trainer`: the trainer, multi-crop views and data loading."""

from .arguments import LeJepaTrainingArguments
from .callbacks import (
    GracefulShutdownCallback,
    StreamStateCallback,
    get_last_complete_checkpoint,
    is_complete_checkpoint,
)
from .data import (
    BUILTIN_DATASETS,
    BadSampleCounter,
    ImageDecodeError,
    MultiCropCollator,
    MultiCropConfig,
    MultiCropTransform,
    check_num_shards,
    decode_image,
    load_builtin_dataset,
    load_digits_dataset,
    load_photos_dataset,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
)
from .trainer import LeJepaTrainer, NonFiniteLossError

__all__ = [
    "BUILTIN_DATASETS",
    "BadSampleCounter",
    "GracefulShutdownCallback",
    "ImageDecodeError",
    "LeJepaTrainer",
    "LeJepaTrainingArguments",
    "MultiCropCollator",
    "MultiCropConfig",
    "MultiCropTransform",
    "NonFiniteLossError",
    "StreamStateCallback",
    "check_num_shards",
    "decode_image",
    "get_last_complete_checkpoint",
    "is_complete_checkpoint",
    "load_builtin_dataset",
    "load_digits_dataset",
    "load_photos_dataset",
    "load_pretraining_dataset",
    "prepare_pretraining_dataset",
]
