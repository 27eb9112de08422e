"""LeJEPA pretraining with `transformers.Trainer`: the trainer, multi-crop views and data loading."""

from .arguments import LeJepaTrainingArguments, resolve_augment_on_device
from .callbacks import (
    GracefulShutdownCallback,
    StreamStateCallback,
    get_last_complete_checkpoint,
    is_complete_checkpoint,
)
from .data import (
    BUILTIN_DATASETS,
    BadSampleCounter,
    DecodeResizeTransform,
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
    prepare_validation_dataset,
    sample_examples,
    split_validation_dataset,
    take_validation_examples,
)
from .device_views import DeviceMultiCrop, view_generator
from .trainer import LeJepaTrainer, NonFiniteLossError
from .validation import EVAL_SIGREG_SEED

__all__ = [
    "EVAL_SIGREG_SEED",
    "BUILTIN_DATASETS",
    "BadSampleCounter",
    "DecodeResizeTransform",
    "DeviceMultiCrop",
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
    "prepare_validation_dataset",
    "sample_examples",
    "split_validation_dataset",
    "take_validation_examples",
    "resolve_augment_on_device",
    "view_generator",
]
