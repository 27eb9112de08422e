"""
The library side of `run_pretraining.py`: the recipes of its built-in datasets, the `LeJepaConfig` it builds from its
arguments, and the evaluation it ends with on a built-in dataset (the three rows: LeJEPA, a random backbone of the
same shape, the raw pixels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from transformers import TrainingArguments

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from modeling_lejepa.configuration_lejepa import set_backbone_num_channels

from .data import BUILTIN_DATASETS
from .evaluation import RawPixelEmbedding, evaluate_embeddings


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
    # Crops of 17 real photographs (which photo does a crop come from; test crops from held-out parts of each photo),
    # with the small-images preset. A photo's colours are part of what identifies it, so the views keep them: no hue
    # or saturation jitter and no grayscale (brightness and contrast jitter stay). The choices are measured in
    # BENCHMARKS.md, "The first command".
    "photos": BuiltinRecipe(
        preset="vit-small-images",
        transform={"hue": 0.0, "saturation": 0.0, "grayscale_prob": 0.0},
        training={"learning_rate": 2e-3, "max_steps": 600, "dataloader_persistent_workers": True},
    ),
    # The 8 x 8 digits upsampled to 32 px carry little detail: local crops cover 20-50% of the image instead of the
    # paper's 5-30%, and colour jitter skips hue and saturation (the digits are grey, so these only cost time). The
    # views are made on the device (the CPU default at this size): over 12 seeds the linear probe scored 0.775
    # against 0.778 with the views made in the DataLoader workers (k-NN 0.662 against 0.653), in a quarter of the
    # time (BENCHMARKS.md, "Views on the device").
    "digits": BuiltinRecipe(
        config={"local_crop_scale": (0.2, 0.5)},
        transform={"hue": 0.0, "saturation": 0.0},
        training={"learning_rate": 2e-3, "max_steps": 800},
    ),
}


def apply_recipe_training_defaults(training_args: TrainingArguments, recipe: BuiltinRecipe, given: set[str]) -> None:
    """Sets the recipe's training values on `training_args`, except those named in `given` (the arguments the user
    set); persistent DataLoader workers only where there are workers."""
    for name, value in recipe.training.items():
        if name not in given:
            setattr(training_args, name, value)
    if training_args.dataloader_num_workers == 0 and "dataloader_persistent_workers" not in given:
        training_args.dataloader_persistent_workers = False  # the recipe's value needs workers


def build_pretraining_config(
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    model_preset: str | None = None,
    config_overrides: str | None = None,
    attn_implementation: str | None = None,
    cache_dir: str | None = None,
    recipe: BuiltinRecipe | None = None,
    num_channels: int | None = None,
) -> LeJepaConfig:
    """
    The `LeJepaConfig` of a run, as `run_pretraining.py`'s arguments of the same names ask: that of the checkpoint
    `model_name_or_path`, else of `config_name`, else the preset `model_preset` (by default the built-in `recipe`'s,
    with its values, or `vit-base-patch16`); then the comma-separated `config_overrides` (validated), the backbone's
    `attn_implementation` and its input channels `num_channels` (those of the data; a checkpoint's must match).

    Example:

    ```python
    >>> from trainer.recipes import BUILTIN_RECIPES, build_pretraining_config
    >>> config = build_pretraining_config(recipe=BUILTIN_RECIPES["digits"], config_overrides="lambda_sigreg=0.1")
    >>> config.local_crop_scale, config.lambda_sigreg
    ((0.2, 0.5), 0.1)
    ```
    """
    if model_name_or_path or config_name:
        config = LeJepaConfig.from_pretrained(model_name_or_path or config_name, cache_dir=cache_dir)
    elif recipe is None:
        config = LeJepaConfig.from_preset(model_preset or "vit-base-patch16")
    else:
        config = LeJepaConfig.from_preset(model_preset or recipe.preset, **recipe.config)
        if model_preset is None and recipe.backbone:
            config.backbone_config.update(recipe.backbone)
            config = LeJepaConfig.from_dict(config.to_dict())  # validates the recipe's values
    if config_overrides:
        config.update_from_string(config_overrides)
        config = LeJepaConfig.from_dict(config.to_dict())  # validates the new values
    if attn_implementation:
        config.backbone_config._attn_implementation = attn_implementation
    if num_channels is not None and num_channels != config.num_channels:
        if model_name_or_path:
            raise ValueError(
                f"The checkpoint {model_name_or_path} takes {config.num_channels}-channel images, but the data has "
                f"{num_channels} channels."
            )
        set_backbone_num_channels(config.backbone_config, num_channels)
    return config


def evaluate_builtin_dataset(
    model: LeJepaForPreTraining,
    dataset_name: str,
    splits: datasets.DatasetDict,
    image_processor: Any,
    output_dir: str,
    seed: int,
) -> dict[str, Any]:
    """
    The k-NN and linear-probe accuracies of the frozen embeddings of `model` on the built-in dataset `dataset_name`
    (its "train" and "test" `splits`), of a randomly initialised backbone of the same shape (from `seed`) and of the
    raw pixels at the model's input resolution, all through the same frozen-embedding protocol; the spectrum of the
    learned embeddings is plotted into `output_dir`. Returns the evaluation results as the model card takes them.
    """
    train_split, test_split = splits["train"], splits["test"]
    trained = evaluate_embeddings(
        model.lejepa, train_split, test_split, image_processor,
        spectrum_plot_path=os.path.join(output_dir, "embedding_spectrum.png"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random_backbone = LeJepaForPreTraining(model.config).lejepa
    random_init = evaluate_embeddings(random_backbone, train_split, test_split, image_processor)
    raw_pixels = evaluate_embeddings(
        RawPixelEmbedding(model.config.global_image_size), train_split, test_split, image_processor
    )
    return {
        **trained, "dataset_name": dataset_name, "dataset_display_name": BUILTIN_DATASETS[dataset_name].description,
        "train_split": "train", "eval_split": "test", "random_init_baseline": random_init,
        "raw_pixel_baseline": raw_pixels,
    }


def format_builtin_evaluation(eval_results: dict[str, Any], image_size: int, num_test_images: int) -> str:
    """The three rows that `run_pretraining.py` prints after `evaluate_builtin_dataset`, under a heading line."""
    rows = (
        ("LeJEPA", eval_results),
        ("random init", eval_results["random_init_baseline"]),
        (f"raw pixels {image_size} px", eval_results["raw_pixel_baseline"]),
    )
    lines = [f"\n{eval_results['dataset_display_name']}, frozen embeddings, {num_test_images} test images:"]
    for name, result in rows:
        lines.append(
            f"  {name:<16} k-NN {result['knn_accuracy']:.3f}   linear probe {result['linear_probe_accuracy']:.3f}"
        )
    return "\n".join(lines)


__all__ = [
    "BUILTIN_RECIPES",
    "BuiltinRecipe",
    "apply_recipe_training_defaults",
    "build_pretraining_config",
    "evaluate_builtin_dataset",
    "format_builtin_evaluation",
]
