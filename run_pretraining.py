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
from dataclasses import dataclass, field

import torch
import transformers
from transformers import AutoImageProcessor, HfArgumentParser, set_seed

from model_cards import build_model_card
from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from trainer import (
    BUILTIN_DATASETS,
    BadSampleCounter,
    DecodeResizeTransform,
    DeviceMultiCrop,
    LeJepaTrainer,
    LeJepaTrainingArguments,
    MultiCropCollator,
    MultiCropConfig,
    MultiCropTransform,
    get_last_complete_checkpoint,
    load_builtin_dataset,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
    prepare_validation_dataset,
    resolve_augment_on_device,
    sample_examples,
    split_validation_dataset,
)
from trainer.evaluation import RawPixelEmbedding, default_image_processor, evaluate_embeddings, knn_metrics

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class BuiltinRecipe:
    """
    What the first command trains on a built-in dataset (`trainer.BUILTIN_DATASETS`, with no data argument). The model
    values apply when no `--model_preset` / `--config_name` / `--model_name_or_path` is given (`config` also with a
    `--model_preset`), each training value when the command line does not set it.

    Args:
        preset (`str`): the `LeJepaConfig` preset.
        config (`dict`): overrides of the preset's `LeJepaConfig` values.
        backbone (`dict`): overrides of the preset's backbone configuration values.
        transform (`dict`): overrides of `MultiCropConfig` fields.
        training (`dict`): `TrainingArguments` values.
    """

    preset: str = "vit-tiny-test"
    config: dict = field(default_factory=dict)
    backbone: dict = field(default_factory=dict)
    transform: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)


BUILTIN_RECIPES = {
    # Crops of 17 real photographs (which photo does a crop come from; test crops from held-out parts of each photo).
    # A 0.16M-parameter ViT (hidden 64, 4 layers, 16 tokens of 8 x 8 px) on 2 global views of 32 px and 2 local
    # views of 16 px: on a CPU the views cost far more than the model (BENCHMARKS.md, "The first command"), so the
    # model is widened and the local views cut from 6 to 2. 600 steps: at 300 the k-NN row was below the random
    # backbone's (0.561 vs 0.590), at 600 above it (0.636; BENCHMARKS.md). Persistent workers: an epoch is 8.5 steps.
    "photos": BuiltinRecipe(
        config={"num_local_views": 2},
        backbone={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4},
        training={"learning_rate": 2e-3, "max_steps": 600, "dataloader_persistent_workers": True},
    ),
    # The 8 x 8 digits upsampled to 32 px carry little detail: local crops cover 20-50% of the image instead of the
    # paper's 5-30%, and colour jitter skips hue and saturation (the digits are grey, so these only cost time).
    "digits": BuiltinRecipe(
        config={"local_crop_scale": (0.2, 0.5)},
        transform={"hue": 0.0, "saturation": 0.0},
        training={"learning_rate": 2e-3, "max_steps": 800},
    ),
}


@dataclass
class ModelArguments:
    """Which model to pretrain."""

    model_preset: str | None = field(
        default=None,
        metadata={
            "help": f"A named configuration: one of {', '.join(LeJepaConfig.available_presets())}. Defaults to "
            "the built-in dataset's recipe (BUILTIN_DATASETS) and to vit-base-patch16 with your data."
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
    validation_dir: str | None = field(
        default=None, metadata={"help": "A local folder of validation images (imagefolder)."}
    )
    train_val_split: float | None = field(
        default=None,
        metadata={"help": "Hold this fraction of the (map-style) training data out as validation data."},
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


def main() -> None:
    # 1. Arguments, from the command line or one JSON file
    parser = HfArgumentParser((ModelArguments, DataArguments, LeJepaTrainingArguments))
    if len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        json_file = os.path.abspath(sys.argv[1])
        model_args, data_args, training_args = parser.parse_json_file(json_file=json_file)
        with open(json_file) as f:
            given = set(json.load(f))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses()
        given = {arg[2:].split("=")[0] for arg in sys.argv[1:] if arg.startswith("--")}
    builtin = None
    if not (data_args.dataset_name or data_args.train_dir or data_args.data_files):
        builtin = BUILTIN_RECIPES[data_args.builtin_dataset]
        for name, value in builtin.training.items():
            if name not in given:
                setattr(training_args, name, value)
        if training_args.dataloader_num_workers == 0 and "dataloader_persistent_workers" not in given:
            training_args.dataloader_persistent_workers = False  # the recipe's value needs workers
    if data_args.streaming and training_args.do_train and training_args.max_steps <= 0:
        raise ValueError("`--streaming` needs `--max_steps`: a stream has no length to derive the schedule from.")

    # 2. Logging and seed
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())
    logger.info(f"Training arguments: {training_args}")
    set_seed(training_args.seed)

    # 3. Configuration and model
    if model_args.model_name_or_path:
        config = LeJepaConfig.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    elif model_args.config_name:
        config = LeJepaConfig.from_pretrained(model_args.config_name, cache_dir=model_args.cache_dir)
    else:
        if builtin is None:
            config = LeJepaConfig.from_preset(model_args.model_preset or "vit-base-patch16")
        else:
            config = LeJepaConfig.from_preset(model_args.model_preset or builtin.preset, **builtin.config)
            if model_args.model_preset is None and builtin.backbone:
                config.backbone_config.update(builtin.backbone)
                config = LeJepaConfig.from_dict(config.to_dict())  # validates the recipe's values
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
        config = LeJepaConfig.from_dict(config.to_dict())  # validates the new values
    if model_args.attn_implementation:
        config.backbone_config._attn_implementation = model_args.attn_implementation
    if model_args.model_name_or_path:
        model = LeJepaForPreTraining.from_pretrained(  # safetensors only: no pickle from a downloaded checkpoint
            model_args.model_name_or_path, config=config, use_safetensors=True
        )
    else:
        model = LeJepaForPreTraining(config)
    if model_args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    logger.info(f"Model: {sum(p.numel() for p in model.parameters()):,} parameters")

    # 4. Image processor: its mean/std normalise the views; it is saved with the model for inference
    if model_args.image_processor_name:
        image_processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name)
    else:
        image_processor = default_image_processor(config.global_image_size)

    # 5. Data: multi-crop views made on the fly (no preprocessing pass), bad images skipped and counted. With
    #    --augment_on_device (the default on accelerators) the workers only decode and resize each image once, and
    #    the trainer cuts and augments the views on the device; otherwise the workers make the views.
    validation, validation_image_column, validation_label_column = None, None, None
    if builtin is not None:
        # Fixed splits (seed 0), the same as run_evaluation.py's: the test images are never pretrained on; they are
        # the validation images.
        builtin_data = load_builtin_dataset(data_args.builtin_dataset, image_size=data_args.builtin_image_size)
        train_dataset, validation = builtin_data["train"], builtin_data["test"]
        image_column, label_column = validation_image_column, validation_label_column = "image", "label"
    else:
        train_dataset, image_column, label_column = load_pretraining_dataset(
            dataset_name=data_args.dataset_name,
            dataset_config_name=data_args.dataset_config_name,
            train_dir=data_args.train_dir,
            data_files=data_args.data_files,
            split=data_args.train_split,
            image_column_name=data_args.image_column_name,
            streaming=data_args.streaming,
            cache_dir=model_args.cache_dir,
            seed=training_args.seed,
            shuffle_buffer_size=data_args.shuffle_buffer_size,
        )
        if data_args.validation_split or data_args.validation_dir:
            validation, validation_image_column, validation_label_column = load_pretraining_dataset(
                dataset_name=None if data_args.validation_dir else data_args.dataset_name,
                dataset_config_name=data_args.dataset_config_name,
                train_dir=data_args.validation_dir,
                data_files=None if data_args.validation_dir else data_args.data_files,
                split=data_args.validation_split or "train",
                image_column_name=data_args.image_column_name,
                streaming=data_args.streaming,
                cache_dir=model_args.cache_dir,
                shuffle_buffer_size=1,  # a fixed order (the loader's default seed, not --seed), no buffer
            )
        elif data_args.train_val_split:
            validation_image_column, validation_label_column = image_column, label_column
    # A fixed validation set (held out of the training data with --train_val_split), see split_validation_dataset
    train_dataset, validation = split_validation_dataset(
        train_dataset, validation_image_column or image_column, validation, data_args.train_val_split,
        data_args.max_eval_samples, seed=training_args.seed,
    )
    views = MultiCropConfig.from_lejepa_config(
        config, image_processor=image_processor, **(builtin.transform if builtin is not None else {})
    )
    augment_on_device = resolve_augment_on_device(training_args, global_image_size=config.global_image_size)
    transform = DecodeResizeTransform(views) if augment_on_device else MultiCropTransform(views)
    logger.info(f"Views made {'on the device' if augment_on_device else 'in the DataLoader workers'}: {transform}")
    num_labels = None
    if label_column is not None and not data_args.streaming:  # the trainer's probe follows `--online_probe`
        num_labels = train_dataset.features[label_column].num_classes
    labelled_train_dataset = train_dataset if num_labels else None  # undecorated, for the k-NN below
    train_dataset = prepare_pretraining_dataset(
        train_dataset,
        transform,
        image_column,
        label_column if num_labels else None,
        counter=BadSampleCounter(max_bad_fraction=data_args.max_bad_fraction),
    )
    if data_args.streaming:
        # Each process reads its own shards: Accelerate must not dispatch batches from process 0.
        training_args.accelerator_config.dispatch_batches = False
    elif training_args.dataloader_num_workers > 0 and "dataloader_persistent_workers" not in given:
        # Map-style data: keep the workers between epochs instead of starting them again (the sampler runs in the
        # main process, so every epoch is still shuffled afresh). Not for streams: workers would keep their epoch.
        training_args.dataloader_persistent_workers = True

    # 6. Validation: the loss on fixed views of each validation image (seeded by its index), and with labelled data
    # (--probe_dataset_name, or labels in both the training and the validation data) the k-NN accuracy of the frozen
    # embeddings, computed as run_evaluation.py does
    eval_dataset, eval_embedding_metrics = None, None
    if validation is not None:
        eval_dataset = prepare_validation_dataset(  # views made by the workers, seeded by index, on every path
            validation, MultiCropTransform(views), validation_image_column,
            counter=BadSampleCounter(max_bad_fraction=data_args.max_bad_fraction),
        )
    elif training_args.do_eval:
        raise ValueError(
            "`--do_eval` (or `--eval_strategy`) needs validation data: pass `--validation_split`, `--validation_dir` "
            "or `--train_val_split`."
        )
    knn_splits = None
    if data_args.probe_dataset_name:
        knn_splits = [
            load_pretraining_dataset(
                dataset_name=data_args.probe_dataset_name, split=split, cache_dir=model_args.cache_dir
            )
            for split in (data_args.probe_train_split, data_args.probe_eval_split)
        ]
        if knn_splits[0][2] is None:
            raise ValueError(f"`--probe_dataset_name` {data_args.probe_dataset_name!r} has no label column.")
    elif labelled_train_dataset is not None and validation_label_column is not None:
        knn_splits = [(labelled_train_dataset, image_column, label_column),
                      (validation, validation_image_column, validation_label_column)]
    if training_args.do_eval and knn_splits is not None:
        (knn_train, knn_image_column, knn_label_column), (knn_eval, _, _) = knn_splits
        eval_embedding_metrics = functools.partial(
            knn_metrics,
            train_dataset=sample_examples(knn_train, data_args.max_probe_samples),
            eval_dataset=sample_examples(knn_eval, data_args.max_probe_samples),
            image_processor=image_processor,
            image_column_name=knn_image_column,
            label_column_name=knn_label_column,
        )

    # 7. Trainer, resuming from the last checkpoint of output_dir if there is one
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
    if training_args.do_train:
        last_checkpoint = None
        if os.path.isdir(training_args.output_dir) and not training_args.overwrite_output_dir:
            last_checkpoint = get_last_complete_checkpoint(training_args.output_dir)  # skips half-written ones
            if last_checkpoint is not None:
                logger.info(f"Resuming from {last_checkpoint}")
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint or last_checkpoint)
        if trainer.stopped_by_signal is not None:  # checkpoint saved; the same command resumes from it
            logger.warning(
                f"Stopped by {signal.Signals(trainer.stopped_by_signal).name} at step {trainer.state.global_step}; "
                "exiting without the final save and evaluation."
            )
            sys.exit(128 + trainer.stopped_by_signal)
        if trainer.state.global_step == 0:
            raise RuntimeError(
                "No training step was made: the data gave no usable image (see the skipped-image warnings above). "
                "Check the data files and `--image_column_name`."
            )

        # 8. Save the model (the best checkpoint's with --load_best_model_at_end), the image processor, the metrics
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()

    # 9. Validation loss (and k-NN accuracy) of the final model, or of --model_name_or_path alone: eval_results.json
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if not training_args.do_train:
        return

    # 10. Built-in data: k-NN and linear probe of the learned embeddings, of a random backbone of the same shape and
    # of the raw pixels at the model's input resolution, all through the same frozen-embedding protocol
    eval_results = None
    if builtin is not None and data_args.builtin_evaluation and trainer.is_world_process_zero():
        train_split, test_split = builtin_data["train"], builtin_data["test"]
        description = BUILTIN_DATASETS[data_args.builtin_dataset].description
        trained = evaluate_embeddings(
            model.lejepa, train_split, test_split, image_processor,
            spectrum_plot_path=os.path.join(training_args.output_dir, "embedding_spectrum.png"),
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(training_args.seed)
            random_backbone = LeJepaForPreTraining(config).lejepa
        random_init = evaluate_embeddings(random_backbone, train_split, test_split, image_processor)
        raw_pixels = evaluate_embeddings(
            RawPixelEmbedding(config.global_image_size), train_split, test_split, image_processor
        )
        eval_results = {
            **trained, "dataset_name": data_args.builtin_dataset, "dataset_display_name": description,
            "train_split": "train", "eval_split": "test", "random_init_baseline": random_init,
            "raw_pixel_baseline": raw_pixels,
        }
        raw_name = f"raw pixels {config.global_image_size} px"
        rows = (("LeJEPA", trained), ("random init", random_init), (raw_name, raw_pixels))
        print(f"\n{description}, frozen embeddings, {len(test_split)} test images:")
        for name, result in rows:
            print(
                f"  {name:<16} k-NN {result['knn_accuracy']:.3f}   linear probe {result['linear_probe_accuracy']:.3f}"
            )

    # 11. The model card (recipe, loss and validation curves, evaluation), then the Hub
    base_model = model_args.model_name_or_path
    if base_model and os.path.isdir(base_model):  # only a Hub id is a valid `base_model`
        base_model = None
    if trainer.is_world_process_zero():
        build_model_card(
            config,
            training_args.output_dir,
            training_args=training_args.to_dict()
            | {"world_size": training_args.world_size, "launch": trainer.launch_summary},
            log_history=trainer.state.log_history,
            eval_results=eval_results,
            dataset_names=[data_args.dataset_name] if data_args.dataset_name else None,
            base_model=base_model,
            model_id=training_args.hub_model_id,
        )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset=data_args.dataset_name, finetuned_from=base_model)


if __name__ == "__main__":
    main()
