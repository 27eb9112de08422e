"""
The command-line tools that act on finished checkpoints, installed as console commands (see `setup.cfg`):
`lejepa-evaluate` (`evaluate_command`, also `python run_evaluation.py` in a clone) and `lejepa-export-backbone`
(`export_command`, also `python export_backbone.py`). `evaluate_main` and `export_main` take the arguments as a list
and return what they made; the work is done by `trainer.evaluation` and `trainer.export`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, HfArgumentParser

from model_cards import build_model_card, update_model_card
from model_cards.card import SPECTRUM_PLOT_NAME
from modeling_lejepa import LeJepaConfig, LeJepaModel, input_image_size

from .evaluation import (
    FrozenEmbeddingArguments,
    default_image_processor,
    embedding_module,
    evaluate_embeddings,
    load_image_processor,
    quiet_loading,
    random_init_like,
    raw_pixels_like,
)
from .export import export_backbone

logger = logging.getLogger(__name__)

EVALUATE_DESCRIPTION = """\
Frozen-backbone evaluation of a LeJEPA (or any `transformers` vision) backbone on a labelled image dataset: k-NN and
linear-probe accuracies, effective rank and SIGReg statistic of the embeddings (see `trainer.evaluation`).

Without --dataset_name, a built-in dataset of run_pretraining.py is used, with the same splits (--builtin_dataset:
crops of 17 photographs by default, or the digits that ship with scikit-learn, upsampled to the model's image size).
--random_init_baseline and --raw_pixel_baseline add the same metrics for a random backbone of the same shape and for
the raw pixels. Results go to a JSON file, the eigenvalue spectrum to a PNG beside it, and, with
--update_model_card, into the checkpoint's model card. Arguments come from the command line or from one JSON file.

Examples:

    lejepa-evaluate --model_name_or_path outputs/photos --random_init_baseline --raw_pixel_baseline \\
        --update_model_card
    lejepa-evaluate --model_name_or_path outputs/vitb --dataset_name uoft-cs/cifar10 \\
        --image_column_name img --eval_split test --output_file cifar10_eval.json
"""

EXPORT_DESCRIPTION = """\
Exports the backbone of a LeJEPA checkpoint to its native `transformers` architecture (a plain ViTModel,
Dinov2Model, ConvNextModel, ResNetModel, or timm's own format for timm backbones), which loads with
`AutoModel.from_pretrained` without custom code and gives the same embeddings (see `trainer.export`).

Example:

    lejepa-export-backbone CHECKPOINT OUTPUT_DIR --model_id org/name-backbone --base_model org/name
"""

# The metrics of a baseline kept in the results, beside the model's.
BASELINE_METRICS = ("knn_accuracy", "linear_probe_accuracy", "effective_rank", "sigreg_statistic", "embedding_size")


# ---------------------------------------------------------------------------------------------------------------------
# lejepa-evaluate
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationArguments:
    """What `lejepa-evaluate` evaluates, on which data, and where the results go; the protocol's settings are
    `FrozenEmbeddingArguments`."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "LeJEPA checkpoint (any head) or exported backbone: a local folder or a Hub id."},
    )
    model_preset: str | None = field(
        default=None,
        metadata={
            "help": "Evaluate a randomly initialised LeJEPA model of this preset instead of a checkpoint: one of "
            f"{', '.join(LeJepaConfig.available_presets())}."
        },
    )
    random_init_baseline: bool = field(
        default=False,
        metadata={
            "help": "Also evaluate a randomly initialised backbone of the same shape, as `random_init_baseline`."
        },
    )
    raw_pixel_baseline: bool = field(
        default=False,
        metadata={
            "help": "Also evaluate the raw pixels at the model's input resolution (the preprocessed image, "
            "flattened) with the same k-NN and probe, as `raw_pixel_baseline`."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code of a Hub checkpoint."})
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A labelled image dataset (Hub id or local path). Defaults to `--builtin_dataset`."},
    )
    builtin_dataset: str = field(
        default="photos",
        metadata={
            "help": "Without --dataset_name: 'photos' (which of 17 photographs a held-out crop comes from) or "
            "'digits' (scikit-learn's digits), the built-in datasets of run_pretraining.py, with the same splits.",
            "choices": ("photos", "digits"),
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the dataset."})
    train_split: str = field(default="train", metadata={"help": "Split the k-NN and the probe learn from."})
    eval_split: str = field(default="test", metadata={"help": "Split the accuracies are measured on."})
    image_column_name: str = field(default="image", metadata={"help": "Column of the images."})
    label_column_name: str = field(default="label", metadata={"help": "Column of the labels."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many train images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval images."})
    digits_test_fraction: float = field(default=0.2, metadata={"help": "Test fraction of the built-in digits."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder of `datasets`."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    device: str | None = field(default=None, metadata={"help": "Defaults to cuda when available, else cpu."})
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where results go; defaults to the checkpoint folder when local, else the current folder."},
    )
    output_file: str | None = field(
        default=None, metadata={"help": "JSON results file; defaults to OUTPUT_DIR/eval_results.json."}
    )
    update_model_card: bool = field(
        default=False, metadata={"help": "Add the results to the model card of the (local) checkpoint."}
    )

    def __post_init__(self):
        if (self.model_name_or_path is None) == (self.model_preset is None):
            raise ValueError("Pass exactly one of --model_name_or_path and --model_preset.")
        if self.update_model_card and (self.model_name_or_path is None or not os.path.isdir(self.model_name_or_path)):
            raise ValueError("--update_model_card needs --model_name_or_path to be a local checkpoint folder.")

    def results_file(self) -> Path:
        """`output_file`, else `eval_results.json` in `output_dir`, else in the checkpoint folder when it is local,
        else in the current folder."""
        if self.output_file:
            return Path(self.output_file)
        if self.output_dir is not None:
            return Path(self.output_dir) / "eval_results.json"
        if self.model_name_or_path is not None and os.path.isdir(self.model_name_or_path):
            return Path(self.model_name_or_path) / "eval_results.json"
        return Path("eval_results.json")


def load_model(args: EvaluationArguments, seed: int = 0) -> tuple[nn.Module, Any]:
    """The model to evaluate and its image processor (a preset's model is initialised under `seed`)."""
    if args.model_preset is not None:
        torch.manual_seed(seed)
        model = LeJepaModel(LeJepaConfig.from_preset(args.model_preset))
        return model, default_image_processor(input_image_size(model.config))
    with quiet_loading():  # the load report lists the head weights a backbone drops on purpose
        model, info = AutoModel.from_pretrained(
            args.model_name_or_path,
            trust_remote_code=args.trust_remote_code,
            cache_dir=args.cache_dir,
            output_loading_info=True,
        )
    if info["missing_keys"]:
        logger.warning(
            "%s lacks weights %s: they are randomly initialised.",
            args.model_name_or_path,
            sorted(info["missing_keys"]),
        )
    return model, load_image_processor(args.model_name_or_path, model.config)


def load_splits(args: EvaluationArguments, image_size: int, seed: int = 0) -> tuple[Any, Any, str]:
    """
    The train and eval splits, and a display name of the dataset. With `max_train_samples` / `max_eval_samples`, a
    split is shuffled with `seed` first, so that the subset is not the first rows of a dataset sorted by label. The
    built-in splits are already shuffled, and fixed: the same as those of `run_pretraining.py` (which pretrains on the
    train split only).
    """
    if args.dataset_name is None:
        from .data import BUILTIN_DATASETS, load_digits_dataset, load_photos_dataset

        if args.builtin_dataset == "digits":  # upsampled to the model's resolution
            builtin = load_digits_dataset(image_size=image_size, test_fraction=args.digits_test_fraction)
        else:
            builtin = load_photos_dataset()
        description = BUILTIN_DATASETS[args.builtin_dataset].description
        return builtin[args.train_split], builtin[args.eval_split], description
    from datasets import Dataset, load_dataset

    def load(split: str, max_samples: int | None) -> Any:
        dataset = load_dataset(args.dataset_name, args.dataset_config_name, split=split, cache_dir=args.cache_dir)
        if max_samples is not None and isinstance(dataset, Dataset) and max_samples < len(dataset):
            dataset = dataset.shuffle(seed=seed)
        return dataset

    train = load(args.train_split, args.max_train_samples)
    return train, load(args.eval_split, args.max_eval_samples), args.dataset_name


def _parse(parser: HfArgumentParser, argv: Sequence[str] | None) -> tuple[Any, ...]:
    """The parser's dataclasses from `argv` (default: the command line), or from a single JSON file argument."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(argv[0])
    return parser.parse_args_into_dataclasses(args=argv)


def _update_card(args: EvaluationArguments, model: nn.Module, results: dict, embeddings: np.ndarray) -> None:
    """Adds the results to the checkpoint's model card, or builds the card of a LeJEPA checkpoint that has none."""
    checkpoint = Path(args.model_name_or_path)
    config = embedding_module(model).config
    if (checkpoint / "README.md").is_file():
        update_model_card(checkpoint, results, embeddings=embeddings)
    elif config.model_type == LeJepaConfig.model_type:
        build_model_card(config, checkpoint, eval_results=results, embeddings=embeddings)
    else:
        logger.warning("%s has no model card to update; skipped.", checkpoint)


def _log_summary(results: dict[str, Any]) -> None:
    summary = (
        f"k-NN accuracy {results['knn_accuracy']:.4f}, linear probe accuracy {results['linear_probe_accuracy']:.4f}, "
        f"effective rank {results['effective_rank']:.2f} / {results['embedding_size']}, "
        f"SIGReg statistic {results['sigreg_statistic']:.4g}"
    )
    logger.info(
        "%s on %s (%s): %s",
        results["model_name_or_path"],
        results["dataset_display_name"],
        results["eval_split"],
        summary,
    )
    for key, name in (("random_init_baseline", "Random init"), ("raw_pixel_baseline", "Raw pixels")):
        if key in results:
            base = results[key]
            logger.info(
                "%s baseline: k-NN accuracy %.4f, linear probe accuracy %.4f, effective rank %.2f",
                name,
                base["knn_accuracy"],
                base["linear_probe_accuracy"],
                base["effective_rank"],
            )


def evaluate_main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """`lejepa-evaluate`: evaluates a checkpoint (and the baselines asked for), writes the results and the spectrum
    plot, updates the model card when asked, and returns the results."""
    # 1. Arguments: what to evaluate and where, and the protocol's settings
    parser = HfArgumentParser(
        (EvaluationArguments, FrozenEmbeddingArguments),
        description=EVALUATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args, protocol = _parse(parser, argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # 2. The model, its image processor and the labelled splits
    model, image_processor = load_model(args, seed=protocol.seed)
    model.to(device).eval()
    image_size = input_image_size(embedding_module(model).config)
    train_dataset, eval_dataset, dataset_display_name = load_splits(args, image_size, seed=protocol.seed)

    # 3. The frozen-embedding protocol on the model (its eval embeddings give the spectrum plot), then the baselines
    output_file = args.results_file()
    output_file.parent.mkdir(parents=True, exist_ok=True)
    evaluate = {
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "image_processor": image_processor,
        "image_column_name": args.image_column_name,
        "label_column_name": args.label_column_name,
        "batch_size": args.batch_size,
        "device": device,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
        "protocol": protocol,
    }
    spectrum_plot_path = output_file.parent / SPECTRUM_PLOT_NAME
    metrics, eval_embeddings = evaluate_embeddings(
        model, spectrum_plot_path=spectrum_plot_path, output_embeddings=True, desc="model", **evaluate
    )
    results = {
        "model_name_or_path": args.model_name_or_path or f"random init ({args.model_preset})",
        "dataset_name": args.dataset_name or args.builtin_dataset,
        "dataset_display_name": dataset_display_name,
        "dataset_config_name": args.dataset_config_name,
        "train_split": args.train_split,
        "eval_split": args.eval_split,
        **metrics,
    }
    baselines = {"random_init_baseline": args.random_init_baseline, "raw_pixel_baseline": args.raw_pixel_baseline}
    for key in [key for key, wanted in baselines.items() if wanted]:
        baseline = random_init_like(model, protocol.seed) if key == "random_init_baseline" else raw_pixels_like(model)
        metrics = evaluate_embeddings(baseline, desc=key, **evaluate)
        results[key] = {name: metrics[name] for name in BASELINE_METRICS}

    # 4. The results: a JSON file beside the spectrum plot, and the model card when asked
    output_file.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote %s and %s", output_file, spectrum_plot_path)
    if args.update_model_card:
        _update_card(args, model, results, eval_embeddings)
    _log_summary(results)
    return results


def evaluate_command() -> None:
    """The `lejepa-evaluate` console command: `evaluate_main` on the command line (a console script's return value
    is its exit status, so the results are not returned)."""
    evaluate_main()


# ---------------------------------------------------------------------------------------------------------------------
# lejepa-export-backbone
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ExportArguments:
    """Options of `lejepa-export-backbone`, besides the positional CHECKPOINT and OUTPUT_DIR: the keyword arguments
    of `trainer.export.export_backbone`."""

    model_id: str | None = field(default=None, metadata={"help": "Hub id the export will have (for its card)."})
    base_model: str | None = field(
        default=None, metadata={"help": "Hub id of the LeJEPA checkpoint, the card's base_model."}
    )
    license: str | None = field(
        default=None, metadata={"help": "License; defaults to the source card's, else apache-2.0."}
    )
    dataset_names: list[str] | None = field(
        default=None, metadata={"help": "Pretraining datasets (Hub ids); default to the source card's."}
    )
    write_default_image_processor: bool = field(
        default=True,
        metadata={"help": "Write an ImageNet-normalised resize processor when the checkpoint has none."},
    )
    verify: bool = field(
        default=True, metadata={"help": "Reload the export without custom code and compare its embeddings."}
    )


def export_main(argv: Sequence[str] | None = None) -> Path:
    """`lejepa-export-backbone CHECKPOINT OUTPUT_DIR [options]`: writes the native backbone, returns its folder."""
    # 1. Arguments: the two folders, then the options of `export_backbone`
    parser = HfArgumentParser(
        ExportArguments, description=EXPORT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint_dir", help="LeJEPA checkpoint (folder or Hub id), any head.")
    parser.add_argument("output_dir", help="Folder to write the native backbone to.")
    args, paths = parser.parse_args_into_dataclasses(args=None if argv is None else list(argv))
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)

    # 2. The export, verified by reloading it without custom code
    output_dir = export_backbone(paths.checkpoint_dir, paths.output_dir, **dataclasses.asdict(args))
    logger.info("Exported the backbone of %s to %s", paths.checkpoint_dir, output_dir)
    return output_dir


def export_command() -> None:
    """The `lejepa-export-backbone` console command: `export_main` on the command line."""
    export_main()


__all__ = [
    "EvaluationArguments",
    "ExportArguments",
    "evaluate_command",
    "evaluate_main",
    "export_command",
    "export_main",
    "load_model",
    "load_splits",
]
