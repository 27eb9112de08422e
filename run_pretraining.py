#!/usr/bin/env python
"""
Pretrain an image backbone with LeJEPA on unlabeled images.

Runs as `python run_pretraining.py ...` or `accelerate launch run_pretraining.py ...`; arguments come from the command
line or from one JSON file (`python run_pretraining.py args.json`). With no data argument it pretrains a small ViT on
a built-in dataset that ships inside installed packages (`--builtin_dataset`: crops of 17 real photographs by
default, or scikit-learn's digits) and prints the k-NN and linear-probe accuracies of the learned embeddings next to
those of a randomly initialised backbone of the same shape and of the raw pixels.

Examples:

    python run_pretraining.py --output_dir outputs/photos
    python run_pretraining.py --builtin_dataset digits --output_dir outputs/digits
    accelerate launch --config_file accelerate_configs/ddp.yaml run_pretraining.py \
        --dataset_name ./my_images --model_preset vit-small-patch16 --output_dir outputs/vits
    accelerate launch run_pretraining.py --dataset_name org/images --streaming --max_steps 100000 \
        --model_preset vit-base-patch16 --bf16 --output_dir outputs/vitb
    python run_pretraining.py --train_dir ./my_images --train_val_split 0.05 --eval_strategy steps --eval_steps 500 \
        --save_steps 500 --load_best_model_at_end --metric_for_best_model eval_loss --output_dir outputs/vits
    python run_pretraining.py --model_name_or_path outputs/vits/checkpoint-1000 --do_train False --do_eval \
        --train_dir ./my_images --train_val_split 0.05 --output_dir outputs/vits-eval
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
import transformers
from transformers import AutoImageProcessor, HfArgumentParser, set_seed
from transformers.utils import check_min_version

from model_cards import build_model_card
from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from trainer import (
    BadSampleCounter,
    DecodeResizeTransform,
    DeviceMultiCrop,
    ImageFormat,
    MultiCropCollator,
    MultiCropConfig,
    MultiCropTransform,
    inspect_dataset_images,
    load_builtin_dataset,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
    prepare_validation_dataset,
    resolve_augment_on_device,
    sample_examples,
    split_validation_dataset,
)
from trainer.arguments import LeJepaTrainingArguments
from trainer.callbacks import get_last_complete_checkpoint
from trainer.evaluation import default_image_processor, knn_metrics
from trainer.recipes import (
    BUILTIN_RECIPES,
    BuiltinRecipe,
    apply_recipe_training_defaults,
    build_pretraining_config,
    evaluate_builtin_dataset,
    format_builtin_evaluation,
)
from trainer.trainer import LeJepaTrainer

# LeJepaTrainer overrides Trainer internals as they are in this version (setup.cfg has the same lower bound).
check_min_version("5.24.0")

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which model to pretrain."""

    model_preset: str | None = field(
        default=None,
        metadata={
            "help": f"A named configuration: one of {', '.join(LeJepaConfig.available_presets())}. Defaults to "
            "the built-in dataset's recipe (BUILTIN_RECIPES) and to vit-base-patch16 with your data; "
            "vit-small-images suits images up to about 64 px on a CPU."
        },
    )
    config_name: str | None = field(default=None, metadata={"help": "A LeJEPA config.json (folder or Hub id)."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated overrides of config values, e.g. 'lambda_sigreg=0.1,num_local_views=4'."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue from the weights of a LeJEPA checkpoint (folder or Hub id)."}
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "An image processor whose mean/std normalise the views; ImageNet's if unset."}
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Backbone attention: 'sdpa' (default where supported), 'flash_attention_2', 'eager', ..."},
    )
    num_channels: int | None = field(
        default=None,
        metadata={"help": "Input channels of the backbone; detected from the data when unset (3 for 8-bit images)."},
    )
    channels_last: bool = field(
        default=False, metadata={"help": "Use the channels_last memory format (faster ConvNets on GPUs)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache downloaded models and data."})


@dataclass
class DataArguments:
    """Which images to pretrain on. With none of dataset_name, train_dir, data_files: a built-in dataset."""

    dataset_name: str | None = field(default=None, metadata={"help": "A Hub dataset id or a local dataset path."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "A local folder of images (imagefolder)."})
    data_files: list[str] | None = field(
        default=None, metadata={"help": "Parquet files or webdataset .tar shards (globs allowed)."}
    )
    train_split: str = field(default="train", metadata={"help": "The split to pretrain on."})
    image_column_name: str | None = field(
        default=None, metadata={"help": "The image column; detected when the data has a single image column."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the data (larger than disk); needs max_steps."})
    shuffle_buffer_size: int = field(default=10_000, metadata={"help": "Shuffle buffer of a streamed dataset."})
    max_pixel_value: float | None = field(
        default=None,
        metadata={"help": "Images that are not 8-bit: divide integer values by this (e.g. 4095 for 12-bit data) "
                  "instead of their dtype's maximum."},
    )
    image_mean: list[float] | None = field(
        default=None,
        metadata={"help": "Images that are not 8-bit: per-channel mean of the rescaled values (else estimated)."},
    )
    image_std: list[float] | None = field(
        default=None, metadata={"help": "Images that are not 8-bit: per-channel std (else estimated with the mean)."}
    )
    image_stats_samples: int = field(
        default=256,
        metadata={"help": "Images sampled before training to detect the format and channels and estimate the "
                  "per-channel mean and std of images that are not 8-bit RGB."},
    )
    max_bad_fraction: float = field(
        default=0.1, metadata={"help": "Stop when more than this fraction of images fail to decode (else skipped)."}
    )
    builtin_dataset: str = field(
        default="photos",
        metadata={
            "help": "Without a data argument: 'photos' (crops of 17 real photographs shipped with scikit-image, "
            "scikit-learn and matplotlib) or 'digits' (scikit-learn's 8x8 digits).",
            "choices": tuple(BUILTIN_RECIPES),
        },
    )
    builtin_image_size: int | None = field(
        default=None, metadata={"help": "Side of the built-in images, in pixels (64 for photos, 32 for digits)."}
    )
    builtin_evaluation: bool = field(
        default=True,
        metadata={
            "help": "On a built-in dataset: end with the k-NN and linear-probe evaluation of the embeddings, of a "
            "random backbone of the same shape and of the raw pixels."
        },
    )
    validation_split: str | None = field(
        default=None, metadata={"help": "A split of the dataset for the validation loss (`--do_eval`), e.g. 'test'."}
    )
    validation_dir: str | None = field(default=None, metadata={"help": "A folder of validation images (imagefolder)."})
    train_val_split: float | None = field(
        default=None, metadata={"help": "Hold this fraction of the (map-style) training data out as validation data."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "At most this many validation images (a fixed sample); required for streamed validation."},
    )
    probe_dataset_name: str | None = field(
        default=None,
        metadata={"help": "A labelled dataset for the evaluation-time k-NN accuracy (`eval_knn_accuracy`)."},
    )
    probe_train_split: str = field(default="train", metadata={"help": "The k-NN's reference split."})
    probe_eval_split: str = field(default="test", metadata={"help": "The split the k-NN accuracy is measured on."})
    max_probe_samples: int = field(
        default=10_000, metadata={"help": "At most this many images of each k-NN split (a fixed sample)."}
    )



def parse_arguments() -> tuple[ModelArguments, DataArguments, LeJepaTrainingArguments, set[str]]:
    """The three argument dataclasses, from the command line or from one JSON file (`run_pretraining.py args.json`),
    and the names of the arguments given there (a recipe's or the script's own defaults apply to the others only)."""
    parser = HfArgumentParser((ModelArguments, DataArguments, LeJepaTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        json_file = os.path.abspath(sys.argv[1])
        model_args, data_args, training_args = parser.parse_json_file(json_file=json_file)
        with open(json_file) as f:
            given = set(json.load(f))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()
        given = {arg[2:].split("=")[0] for arg in sys.argv[1:] if arg.startswith("--")}
    return model_args, data_args, training_args, given


def builtin_recipe(
    data_args: DataArguments, training_args: LeJepaTrainingArguments, given: set[str]
) -> BuiltinRecipe | None:
    """With no data argument, the recipe of `--builtin_dataset`, its training values set on `training_args` where
    the command line does not set them; else `None`. Also checks that a stream comes with `--max_steps`."""
    recipe = None
    if not (data_args.dataset_name or data_args.train_dir or data_args.data_files):
        recipe = BUILTIN_RECIPES[data_args.builtin_dataset]
        apply_recipe_training_defaults(training_args, recipe, given)
    if data_args.streaming and training_args.do_train and training_args.max_steps <= 0:
        raise ValueError("`--streaming` needs `--max_steps`: a stream has no length to derive the schedule from.")
    return recipe


def load_model(config: LeJepaConfig, model_args: ModelArguments) -> LeJepaForPreTraining:
    """A new model of `config`, or the weights of `--model_name_or_path` (safetensors only: no pickle from a
    downloaded checkpoint), in the channels_last memory format with `--channels_last`."""
    if model_args.model_name_or_path:
        model = LeJepaForPreTraining.from_pretrained(
            model_args.model_name_or_path, config=config, use_safetensors=True
        )
    else:
        model = LeJepaForPreTraining(config)
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    logger.info(f"Model: {model.num_parameters():,} parameters")
    return model


def load_image_processor(image_processor_name: str | None, image_size: int) -> Any:
    """`--image_processor_name`'s image processor, else the ImageNet-normalising one at `image_size` px."""
    if image_processor_name:
        return AutoImageProcessor.from_pretrained(image_processor_name)
    return default_image_processor(image_size)


@dataclass
class PretrainingData:
    """The training split and the (fixed) validation split of a run, undecorated, with their image and label
    columns (`None` where there is no label), and the built-in dataset's splits when it is one."""

    train: datasets.Dataset | datasets.IterableDataset
    image_column: str
    label_column: str | None
    validation: datasets.Dataset | None = None
    validation_image_column: str | None = None
    validation_label_column: str | None = None
    builtin: datasets.DatasetDict | None = None


def load_data(data_args: DataArguments, model_args: ModelArguments, seed: int, builtin: bool) -> PretrainingData:
    """
    The training data and the validation set: with `builtin`, the fixed splits of `--builtin_dataset` (seed 0, the
    same as run_evaluation.py's: the test images are never pretrained on; they are the validation images), else the
    data arguments' dataset and its validation split or folder, or a `--train_val_split` of the training data held
    out (see `split_validation_dataset`).
    """
    if builtin:
        splits = load_builtin_dataset(data_args.builtin_dataset, image_size=data_args.builtin_image_size)
        data = PretrainingData(splits["train"], "image", "label", splits["test"], "image", "label", builtin=splits)
    else:
        source = {  # what the training and the validation data share
            "dataset_config_name": data_args.dataset_config_name,
            "image_column_name": data_args.image_column_name,
            "streaming": data_args.streaming,
            "cache_dir": model_args.cache_dir,
        }
        data = PretrainingData(*load_pretraining_dataset(
            dataset_name=data_args.dataset_name, train_dir=data_args.train_dir, data_files=data_args.data_files,
            split=data_args.train_split, seed=seed, shuffle_buffer_size=data_args.shuffle_buffer_size, **source,
        ))
        if data_args.validation_split or data_args.validation_dir:
            data.validation, data.validation_image_column, data.validation_label_column = load_pretraining_dataset(
                dataset_name=None if data_args.validation_dir else data_args.dataset_name,
                train_dir=data_args.validation_dir,
                data_files=None if data_args.validation_dir else data_args.data_files,
                split=data_args.validation_split or "train",
                shuffle_buffer_size=1,  # a fixed order (the loader's default seed, not --seed), no buffer
                **source,
            )
        elif data_args.train_val_split:
            data.validation_image_column, data.validation_label_column = data.image_column, data.label_column
    data.train, data.validation = split_validation_dataset(
        data.train, data.validation_image_column or data.image_column, data.validation, data_args.train_val_split,
        data_args.max_eval_samples, seed=seed,
    )
    return data


def inspect_data(data: PretrainingData, data_args: DataArguments, num_channels: int | None) -> ImageFormat:
    """The pixel format of the training images, from a fixed sample of them (`inspect_dataset_images`): 8-bit RGB
    (the built-in datasets always), or values and channels kept with their per-channel mean and std."""
    if data.builtin is not None:
        return ImageFormat("rgb", 3, "uint8", 1 / 255)
    return inspect_dataset_images(
        data.train, data.image_column, data_args.image_stats_samples, num_channels=num_channels,
        max_pixel_value=data_args.max_pixel_value, image_mean=data_args.image_mean, image_std=data_args.image_std,
    )


def prepare_training_data(
    data: PretrainingData,
    views: MultiCropConfig,
    augment_on_device: bool,
    data_args: DataArguments,
    decode_on_device: bool = False,
) -> tuple[datasets.Dataset | datasets.IterableDataset, int | None]:
    """
    The training dataset with robust decoding and its views made on the fly (no preprocessing pass; bad images skipped
    and counted): by the DataLoader workers, or, with `augment_on_device`, cut and augmented by the trainer on the
    device from images the workers only decode and resize once (with `decode_on_device`, JPEGs are decoded on the
    device too). Also the number of classes for the online probe (`None` without labels, and for streams).
    """
    if decode_on_device and not augment_on_device:
        raise ValueError(
            "`--decode_on_device` decodes JPEGs on the device for the views made there: it needs "
            "`--augment_on_device` (which is off here)."
        )
    if augment_on_device:
        transform = DecodeResizeTransform(views, decode_on_device=decode_on_device)
    else:
        transform = MultiCropTransform(views)
    logger.info(f"Views made {'on the device' if augment_on_device else 'in the DataLoader workers'}: {transform}")
    num_labels = None
    if data.label_column is not None and not data_args.streaming:  # the trainer's probe follows `--online_probe`
        num_labels = data.train.features[data.label_column].num_classes
    train_dataset = prepare_pretraining_dataset(
        data.train,
        transform,
        data.image_column,
        data.label_column if num_labels else None,
        counter=BadSampleCounter(max_bad_fraction=data_args.max_bad_fraction),
    )
    return train_dataset, num_labels


def configure_data_loading(training_args: LeJepaTrainingArguments, streaming: bool, given: set[str]) -> None:
    """Streams: each process reads its own shards (Accelerate must not dispatch batches from process 0). Map-style
    data: persistent workers unless `--dataloader_persistent_workers` is given."""
    if streaming:
        training_args.accelerator_config.dispatch_batches = False
    elif training_args.dataloader_num_workers > 0 and "dataloader_persistent_workers" not in given:
        # Keep the workers between epochs instead of starting them again (the sampler runs in the main process, so
        # every epoch is still shuffled afresh). Not for streams: workers would keep their epoch.
        training_args.dataloader_persistent_workers = True


def prepare_eval_dataset(
    data: PretrainingData, views: MultiCropConfig, data_args: DataArguments, do_eval: bool
) -> datasets.Dataset | None:
    """The validation set with fixed views of each image (made by the workers, seeded by its index, on every path),
    or `None`; `--do_eval` without validation data is an error."""
    if data.validation is not None:
        return prepare_validation_dataset(
            data.validation, MultiCropTransform(views), data.validation_image_column,
            counter=BadSampleCounter(max_bad_fraction=data_args.max_bad_fraction),
        )
    if do_eval:
        raise ValueError(
            "`--do_eval` (or `--eval_strategy`) needs validation data: pass `--validation_split`, `--validation_dir` "
            "or `--train_val_split`."
        )
    return None


def load_knn_splits(
    data: PretrainingData, num_labels: int | None, data_args: DataArguments, model_args: ModelArguments
) -> list[tuple[Any, str, str | None]] | None:
    """The reference and the evaluated split of the evaluation-time k-NN accuracy, each `(dataset, image column,
    label column)`: those of `--probe_dataset_name`, else, with labels in both, the training and validation data."""
    if data_args.probe_dataset_name:
        splits = [
            load_pretraining_dataset(
                dataset_name=data_args.probe_dataset_name, split=split, cache_dir=model_args.cache_dir
            )
            for split in (data_args.probe_train_split, data_args.probe_eval_split)
        ]
        if splits[0][2] is None:
            raise ValueError(f"`--probe_dataset_name` {data_args.probe_dataset_name!r} has no label column.")
        return splits
    if num_labels and data.validation_label_column is not None:
        return [(data.train, data.image_column, data.label_column),
                (data.validation, data.validation_image_column, data.validation_label_column)]
    return None


def knn_accuracy_metrics(
    knn_splits: list[tuple[Any, str, str | None]], image_processor: Any, max_samples: int
) -> Callable[[torch.nn.Module], dict[str, float]]:
    """The trainer's `eval_embedding_metrics`: the k-NN accuracy of the frozen embeddings on fixed samples of at most
    `max_samples` images of each of the `knn_splits` (see `load_knn_splits`)."""
    (knn_train, image_column, label_column), (knn_eval, _, _) = knn_splits
    return functools.partial(
        knn_metrics,
        train_dataset=sample_examples(knn_train, max_samples),
        eval_dataset=sample_examples(knn_eval, max_samples),
        image_processor=image_processor,
        image_column_name=image_column,
        label_column_name=label_column,
    )


def train(trainer: LeJepaTrainer, training_args: LeJepaTrainingArguments) -> None:
    """
    Trains, resuming from the last complete checkpoint of `output_dir` (half-written ones are skipped) unless
    `--overwrite_output_dir`, then saves the model (the best checkpoint's with `--load_best_model_at_end`), the image
    processor, the metrics and the state. Stopped by a signal, it exits with `128 + signal` after the checkpoint, which
    the same command resumes from.
    """
    last_checkpoint = None
    if os.path.isdir(training_args.output_dir) and not training_args.overwrite_output_dir:
        last_checkpoint = get_last_complete_checkpoint(training_args.output_dir)
        if last_checkpoint is not None:
            logger.info(f"Resuming from {last_checkpoint}")
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
    if trainer.stopped_by_signal is not None:
        logger.warning(
            f"Stopped by {signal.Signals(trainer.stopped_by_signal).name} at step {trainer.state.global_step}; "
            "exiting without the final save and evaluation."
        )
        trainer.accelerator.end_training()
        sys.exit(128 + trainer.stopped_by_signal)
    if trainer.state.global_step == 0:
        raise RuntimeError(
            "No training step was made: the data gave no usable image (see the skipped-image warnings above). "
            "Check the data files and `--image_column_name`."
        )
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()


def write_model_card(
    trainer: LeJepaTrainer, dataset_name: str | None, base_model: str | None, eval_results: dict | None
) -> None:
    """The model card of the run in `output_dir`: its recipe, loss and validation curves, and `eval_results`."""
    args = trainer.args
    build_model_card(
        trainer.model.config,
        args.output_dir,
        training_args=args.to_dict() | {"world_size": args.world_size, "launch": trainer.launch_summary},
        log_history=trainer.state.log_history,
        eval_results=eval_results,
        dataset_names=[dataset_name] if dataset_name else None,
        base_model=base_model,
        model_id=args.hub_model_id,
    )


def hub_base_model(model_name_or_path: str | None) -> str | None:
    """The `base_model` of the model card: `--model_name_or_path` when it is a Hub id (a local folder is not)."""
    if model_name_or_path and os.path.isdir(model_name_or_path):
        return None
    return model_name_or_path


def main() -> None:
    # 1. Arguments, from the command line or one JSON file; with no data argument, a built-in dataset and its recipe
    model_args, data_args, training_args, given = parse_arguments()
    recipe = builtin_recipe(data_args, training_args, given)

    # 2. Logging and seed
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    logger.info(f"Training arguments: {training_args}")
    set_seed(training_args.seed)

    # 3. Data: the training and validation splits, and the images' format from a fixed sample of them: 8-bit RGB, or
    #    values and channels kept (16-bit, CT, multi-band), with their channels and per-channel mean and std
    data = load_data(data_args, model_args, training_args.seed, builtin=recipe is not None)
    image_format = inspect_data(data, data_args, model_args.num_channels)
    is_float = image_format.pixel_format == "float"

    # 4. Configuration and model, with the data's channels
    config = build_pretraining_config(
        model_args.model_name_or_path, model_args.config_name, model_args.model_preset, model_args.config_overrides,
        model_args.attn_implementation, model_args.cache_dir, recipe, num_channels=image_format.num_channels,
    )
    model = load_model(config, model_args)

    # 5. Image processor: its rescaling and mean/std normalise the views; it is saved with the model for inference
    if is_float and model_args.image_processor_name:
        raise ValueError(
            "These images are read with their values and channels, and normalised with their own per-channel mean "
            "and std: give them with `--image_mean`/`--image_std` instead of `--image_processor_name`."
        )
    if is_float:
        image_processor = image_format.image_processor(config.global_image_size)
    else:
        image_processor = load_image_processor(model_args.image_processor_name, config.global_image_size)

    # 6. The multi-crop views: in the DataLoader workers, or on the device with --augment_on_device (the default on
    #    accelerators and, on a CPU, for global views of at most 96 px)
    views = MultiCropConfig.from_lejepa_config(
        config, image_processor=image_processor, **(recipe.transform if recipe is not None else {}),
        **({"pixel_format": "float", "rescale_factor": image_format.rescale_factor} if is_float else {}),
    )
    augment_on_device = resolve_augment_on_device(training_args, global_image_size=config.global_image_size)
    train_dataset, num_labels = prepare_training_data(
        data, views, augment_on_device, data_args, training_args.decode_on_device
    )
    configure_data_loading(training_args, data_args.streaming, given)

    # 7. Validation: the loss on fixed views of each validation image, and with labelled data the k-NN accuracy of the
    #    frozen embeddings, computed as run_evaluation.py does
    eval_dataset = prepare_eval_dataset(data, views, data_args, training_args.do_eval)
    knn_splits = load_knn_splits(data, num_labels, data_args, model_args)
    eval_embedding_metrics = None
    if training_args.do_eval and knn_splits is not None:
        eval_embedding_metrics = knn_accuracy_metrics(knn_splits, image_processor, data_args.max_probe_samples)

    # 8. Trainer
    trainer = LeJepaTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset,
        data_collator=MultiCropCollator(),
        processing_class=image_processor,
        probe_num_labels=num_labels,
        eval_embedding_metrics=eval_embedding_metrics,
        augment_on_device=augment_on_device,
        device_views=DeviceMultiCrop(views) if augment_on_device else None,
    )

    # 9. Training, resuming from the last complete checkpoint of output_dir; the final model, metrics and state
    if training_args.do_train:
        train(trainer, training_args)

    # 10. Validation loss (and k-NN accuracy) of the final model, or of --model_name_or_path alone: eval_results.json
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if not training_args.do_train:
        trainer.accelerator.end_training()
        return

    # 11. Built-in data: k-NN and linear probe of the learned embeddings, of a random backbone and of the raw pixels
    eval_results = None
    if recipe is not None and data_args.builtin_evaluation and trainer.is_world_process_zero():
        eval_results = evaluate_builtin_dataset(
            model, data_args.builtin_dataset, data.builtin, image_processor, training_args.output_dir,
            training_args.seed,
        )
        print(format_builtin_evaluation(eval_results, config.global_image_size, len(data.builtin["test"])))

    # 12. The model card (recipe, loss and validation curves, evaluation), then the Hub
    base_model = hub_base_model(model_args.model_name_or_path)
    if trainer.is_world_process_zero():
        write_model_card(trainer, data_args.dataset_name, base_model, eval_results)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=data_args.dataset_name, finetuned_from=base_model)

    # 13. The process group is destroyed while the interpreter is whole: a gloo group left to the interpreter's exit
    #     can abort the process (SIGABRT) after a successful run, and NCCL warns of leaked resources
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
