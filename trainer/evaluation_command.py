"""
The `lejepa-evaluate` command (`evaluate_command`, also `python run_evaluation.py` in a clone; `trainer.cli` exports
it): the frozen-embedding evaluation of `trainer.evaluation` on one or several checkpoints, with the baselines, a JSON
file of the results, the spectrum plot and the model card. `evaluate_main` takes the arguments as a list and returns
the results.
"""

from __future__ import annotations

import argparse
import gc
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
from transformers import AutoConfig, AutoModel, HfArgumentParser, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from model_cards import build_model_card, update_model_card
from model_cards.card import SPECTRUM_PLOT_NAME
from modeling_lejepa import LeJepaConfig, LeJepaModel, input_image_size, uses_cls_token

from .embedding_cache import EmbeddingCache, model_fingerprint, model_source_files
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

logger = logging.getLogger(__name__)

EVALUATE_DESCRIPTION = """\
Frozen-backbone evaluation of LeJEPA (or any `transformers` image) backbones on a labelled image dataset: k-NN and
linear-probe accuracies, effective rank and SIGReg statistic of the embeddings (see `trainer.evaluation`).

--model_name_or_path takes one model or several, compared on the same images: LeJEPA checkpoints (any head) and
`transformers` image backbones (ViT, DINOv2, CLIP's or SigLIP's vision tower, also from a full CLIP folder, ConvNeXt,
ResNet, timm models through TimmWrapper, ...), each with its own image processor. Without --dataset_name, a built-in
dataset of run_pretraining.py is used, with the same splits (--builtin_dataset: crops of 17 photographs by default, or
the digits that ship with scikit-learn, upsampled to the resolution of the card's model). --random_init_baseline and
--raw_pixel_baseline add the same metrics for a random backbone of the card model's shape and for the raw pixels.
Results go to a JSON file (with several models, a `models` list of per-model results), the card model's eigenvalue
spectrum to a PNG beside it, and, with --update_model_card, into the card model's model card as one side-by-side
table. The card model is --card_model, else the first LeJEPA checkpoint, else the first model.
--embedding_cache_dir keeps the embeddings on disk, so that a re-run computes no forward pass. Arguments come from
the command line or from one JSON file.

Examples:

    lejepa-evaluate --model_name_or_path outputs/photos --random_init_baseline --raw_pixel_baseline \\
        --update_model_card
    lejepa-evaluate --model_name_or_path outputs/vitb facebook/dinov2-small --dataset_name uoft-cs/cifar10 \\
        --image_column_name img --eval_split test --random_init_baseline --update_model_card \\
        --embedding_cache_dir embeddings
"""

# The metrics of a baseline kept in the results, beside the model's.
BASELINE_METRICS = ("knn_accuracy", "linear_probe_accuracy", "effective_rank", "sigreg_statistic", "embedding_size")
# The fields of a compared model kept in the card model's results (one row of its card's table).
COMPARED_FIELDS = ("model_name_or_path", "model_label", *BASELINE_METRICS, "num_train_samples", "num_eval_samples")
SUPPORTED_BACKBONES = (
    "LeJEPA checkpoints and `transformers` models whose input is `pixel_values` (ViT, DINOv2, ConvNeXt, ResNet, timm "
    "models through TimmWrapper, ...), or the vision tower of a model that has a `vision_config` (CLIP, SigLIP)"
)


@dataclass
class EvaluationArguments:
    """What `lejepa-evaluate` evaluates, on which data, and where the results go; the protocol's settings are
    `FrozenEmbeddingArguments`."""

    model_name_or_path: list[str] | None = field(
        default=None,
        metadata={
            "help": "One or several models, compared on the same data: LeJEPA checkpoints (any head), exported "
            "backbones or any `transformers` image backbone (local folders or Hub ids)."
        },
    )
    model_preset: str | None = field(
        default=None,
        metadata={
            "help": "Evaluate a randomly initialised LeJEPA model of this preset instead of a checkpoint: one of "
            f"{', '.join(LeJepaConfig.available_presets())}."
        },
    )
    card_model: str | None = field(
        default=None,
        metadata={
            "help": "Which of --model_name_or_path gets the baselines, the spectrum plot and, with "
            "--update_model_card, the table; defaults to the first LeJEPA checkpoint, else the first model."
        },
    )
    random_init_baseline: bool = field(
        default=False,
        metadata={
            "help": "Also evaluate a randomly initialised backbone of the card model's shape, as "
            "`random_init_baseline`."
        },
    )
    raw_pixel_baseline: bool = field(
        default=False,
        metadata={
            "help": "Also evaluate the raw pixels at the card model's input resolution (the preprocessed image, "
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
    cache_dir: str | None = field(default=None, metadata={"help": "Cache folder of `datasets` and of the Hub."})
    embedding_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Keep each model's embeddings of each split in this folder, keyed by the model's files, its "
            "image processor and the dataset; a re-run reads them instead of embedding again."
        },
    )
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    device: str | None = field(default=None, metadata={"help": "Defaults to cuda when available, else cpu."})
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where results go; defaults to the card model's folder when local, else the current folder."
        },
    )
    output_file: str | None = field(
        default=None, metadata={"help": "JSON results file; defaults to OUTPUT_DIR/eval_results.json."}
    )
    update_model_card: bool = field(
        default=False,
        metadata={"help": "Add the results (one row per model) to the model card of the (local) card model."},
    )

    def __post_init__(self):
        if isinstance(self.model_name_or_path, str):  # a JSON file may give one name as a string
            self.model_name_or_path = [self.model_name_or_path]
        names = self.model_name_or_path or []
        if bool(names) == (self.model_preset is not None):
            raise ValueError("Pass exactly one of --model_name_or_path and --model_preset.")
        locations = [_location(name) for name in names]
        repeated = sorted({name for name, where in zip(names, locations) if locations.count(where) > 1})
        if repeated:
            raise ValueError(f"--model_name_or_path names the same model more than once: {', '.join(repeated)}.")
        if self.card_model is not None and _location(self.card_model) not in locations:
            raise ValueError(f"--card_model {self.card_model} is not one of --model_name_or_path {' '.join(names)}.")
        card = self.card_model or (names[0] if len(names) == 1 else None)
        if self.update_model_card and self.model_preset is not None:
            raise ValueError("--update_model_card needs --model_name_or_path to be a local checkpoint folder.")
        if self.update_model_card and card is not None and not os.path.isdir(card):
            raise ValueError(f"--update_model_card needs the card model, {card}, to be a local checkpoint folder.")

    def results_file(self, card_model: str | None = None) -> Path:
        """`output_file`, else `eval_results.json` in `output_dir`, else in the card model's folder when it is
        local, else in the current folder."""
        if self.output_file:
            return Path(self.output_file)
        if self.output_dir is not None:
            return Path(self.output_dir) / "eval_results.json"
        if card_model is not None and os.path.isdir(card_model):
            return Path(card_model) / "eval_results.json"
        return Path("eval_results.json")


def _location(name: str) -> str:
    """A local folder's real path (so that two spellings of one folder are one model), else the name."""
    return os.path.realpath(name) if os.path.isdir(name) else name


def model_labels(names: Sequence[str]) -> list[str]:
    """Short names of models for tables: a local folder's name, a Hub id as is; the names as given where two
    folders have the same name."""
    labels = [Path(name).resolve().name if os.path.isdir(name) else name for name in names]
    return [label if labels.count(label) == 1 else name for label, name in zip(labels, names)]


def backbone_loader(config: PretrainedConfig, name: str) -> tuple[Any, dict[str, Any], PretrainedConfig]:
    """
    How `lejepa-evaluate` loads the image backbone of a checkpoint whose configuration is `config`: the class whose
    `from_pretrained` loads it, its keyword arguments, and the configuration of the module that embeds (whose
    `modeling_lejepa.pool_embedding` is the embedding).

    - A LeJEPA checkpoint (any head), or custom code: `AutoModel` (`LeJepaModel`, the backbone alone).
    - A `transformers` image model (its `AutoModel` class takes `pixel_values`): that class; ViT and DeiT without
      their pooler (a trained Linear + tanh head, randomly initialised when the folder lacks it), so that the
      embedding is the final-normed CLS token as for LeJEPA (`modeling_lejepa.uses_cls_token`). DINOv2, CLIP's vision
      tower, ConvNeXt, ResNet and timm models give their `pooler_output`.
    - A model of several modalities with a `vision_config` (a full CLIP or SigLIP folder): its vision tower's class
      (`CLIPVisionModel`, ...), which loads the tower's weights from the same folder.

    Raises:
        `ValueError` naming `name` for anything else (a text model, for instance).
    """
    if config.model_type == LeJepaConfig.model_type or getattr(config, "auto_map", None):
        return AutoModel, {}, config
    for candidate in (config, getattr(config, "vision_config", None)):
        if not isinstance(candidate, PretrainedConfig):
            continue
        try:
            model_class = MODEL_MAPPING[type(candidate)]
        except KeyError:
            continue
        if model_class.main_input_name == "pixel_values":
            kwargs = {"add_pooling_layer": False} if uses_cls_token(candidate) else {}
            return model_class, kwargs, candidate
    raise ValueError(
        f"{name} is a {config.model_type!r} model ({', '.join(config.architectures or ['no architecture'])}), not an "
        f"image backbone. lejepa-evaluate compares {SUPPORTED_BACKBONES}."
    )


def load_config(args: EvaluationArguments, name: str) -> PretrainedConfig:
    """The configuration of the checkpoint `name`, checked to be an image backbone (`backbone_loader`)."""
    config = AutoConfig.from_pretrained(name, trust_remote_code=args.trust_remote_code, cache_dir=args.cache_dir)
    backbone_loader(config, name)
    return config


def load_model(args: EvaluationArguments, name: str | None = None, seed: int = 0) -> tuple[nn.Module, Any]:
    """The model `name` (default: the first of `--model_name_or_path`) loaded as its image backbone
    (`backbone_loader`), and its image processor; with `--model_preset`, a random model of the preset initialised
    under `seed`."""
    if args.model_preset is not None:
        torch.manual_seed(seed)
        model = LeJepaModel(LeJepaConfig.from_preset(args.model_preset))
        return model, default_image_processor(input_image_size(model.config))
    name = name or args.model_name_or_path[0]
    model_class, kwargs, _ = backbone_loader(load_config(args, name), name)
    if model_class is AutoModel:
        kwargs["trust_remote_code"] = args.trust_remote_code
    with quiet_loading():  # the load report lists the weights of a head or a text tower, dropped on purpose
        model, info = model_class.from_pretrained(name, cache_dir=args.cache_dir, output_loading_info=True, **kwargs)
    if info["missing_keys"]:
        logger.warning("%s lacks weights %s: they are randomly initialised.", name, sorted(info["missing_keys"]))
    if getattr(embedding_module(model), "main_input_name", "pixel_values") != "pixel_values":
        raise ValueError(f"{name} loads as {type(model).__name__}, not an image backbone: {SUPPORTED_BACKBONES}.")
    return model, load_image_processor(name, embedding_module(model).config)


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


def _card_model(args: EvaluationArguments) -> tuple[str | None, int]:
    """The card model (`--card_model`, else the first LeJEPA checkpoint, else the first model) and the input
    resolution of its embedding module; every configuration is read (and checked) first, before any weights."""
    if args.model_preset is not None:
        return None, input_image_size(LeJepaConfig.from_preset(args.model_preset))
    configs = {name: load_config(args, name) for name in args.model_name_or_path}
    lejepa = [name for name, config in configs.items() if config.model_type == LeJepaConfig.model_type]
    card = args.card_model or (lejepa or args.model_name_or_path)[0]
    card = next(name for name in configs if _location(name) == _location(card))
    if args.update_model_card and not os.path.isdir(card):
        raise ValueError(f"--update_model_card needs the card model, {card}, to be a local checkpoint folder.")
    _, _, embedding_config = backbone_loader(configs[card], card)
    return card, input_image_size(embedding_config)


def _embedding_cache(args: EvaluationArguments, module: nn.Module, **source: Any) -> EmbeddingCache | None:
    """The embedding cache of `module` under `--embedding_cache_dir`, or `None` without it."""
    if args.embedding_cache_dir is None:
        return None
    return EmbeddingCache(args.embedding_cache_dir, model_fingerprint(embedding_module(module), **source))


def _evaluate_model(
    args: EvaluationArguments,
    protocol: FrozenEmbeddingArguments,
    name: str | None,
    label: str,
    common: dict[str, Any],
    spectrum_plot_path: Path | None,
) -> tuple[dict[str, Any], np.ndarray, PretrainedConfig]:
    """The metrics of one model, with the baselines asked for when `spectrum_plot_path` is given (the card model),
    its eval embeddings and its embedding module's configuration. The model is freed afterwards."""
    model, image_processor = load_model(args, name, seed=protocol.seed)
    model.to(common["device"]).eval()
    if name is None:
        source = {"preset": args.model_preset, "seed": protocol.seed}
    else:
        source = {"files": model_source_files(name, args.cache_dir)}
    kwargs = {**common, "image_processor": image_processor, "protocol": protocol}
    metrics, eval_embeddings = evaluate_embeddings(
        model,
        spectrum_plot_path=spectrum_plot_path,
        output_embeddings=True,
        desc=label,
        embedding_cache=_embedding_cache(args, model, **source),
        **kwargs,
    )
    results = {"model_name_or_path": name or f"random init ({args.model_preset})", **metrics}
    baselines = {"random_init_baseline": args.random_init_baseline, "raw_pixel_baseline": args.raw_pixel_baseline}
    for key in [key for key, wanted in baselines.items() if wanted and spectrum_plot_path is not None]:
        if key == "random_init_baseline":
            baseline = random_init_like(model, protocol.seed)
            cache = _embedding_cache(args, baseline, seed=protocol.seed)
        else:
            baseline = raw_pixels_like(model)
            cache = _embedding_cache(args, baseline)
        metrics = evaluate_embeddings(baseline, desc=f"{label} {key}", embedding_cache=cache, **kwargs)
        results[key] = {metric: metrics[metric] for metric in BASELINE_METRICS}
    config = embedding_module(model).config
    del model
    gc.collect()
    return results, eval_embeddings, config


def _update_card(card_dir: Path, config: PretrainedConfig, results: dict, embeddings: np.ndarray) -> None:
    """Adds the results to the card model's model card, or builds the card of a LeJEPA checkpoint that has none."""
    if (card_dir / "README.md").is_file():
        update_model_card(card_dir, results, embeddings=embeddings)
    elif config.model_type == LeJepaConfig.model_type:
        build_model_card(config, card_dir, eval_results=results, embeddings=embeddings)
    else:
        logger.warning("%s has no model card to update; skipped.", card_dir)


def _log_summary(results: dict[str, Any], dataset: str) -> None:
    summary = (
        f"k-NN accuracy {results['knn_accuracy']:.4f}, linear probe accuracy {results['linear_probe_accuracy']:.4f}, "
        f"effective rank {results['effective_rank']:.2f} / {results['embedding_size']}, "
        f"SIGReg statistic {results['sigreg_statistic']:.4g}"
    )
    logger.info("%s on %s: %s", results["model_name_or_path"], dataset, summary)
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
    """`lejepa-evaluate`: evaluates one or several models (and the card model's baselines asked for), writes the
    results and the spectrum plot, updates the card model's card when asked, and returns the results: one model's
    `dict`, or with several models the dataset's fields and a `models` list of those `dict`s."""
    # 1. Arguments: what to evaluate and where, and the protocol's settings
    parser = HfArgumentParser(
        (EvaluationArguments, FrozenEmbeddingArguments),
        description=EVALUATE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    args, protocol = _parse(parser, argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # 2. Every model's configuration (checked before any weights load), the card model, and the labelled splits
    card_model, image_size = _card_model(args)
    train_dataset, eval_dataset, dataset_display_name = load_splits(args, image_size, seed=protocol.seed)
    dataset = {
        "dataset_name": args.dataset_name or args.builtin_dataset,
        "dataset_display_name": dataset_display_name,
        "dataset_config_name": args.dataset_config_name,
        "train_split": args.train_split,
        "eval_split": args.eval_split,
    }
    output_file = args.results_file(card_model)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    spectrum_plot_path = output_file.parent / SPECTRUM_PLOT_NAME

    # 3. The frozen-embedding protocol on each model in turn; the card model also gets the baselines and the plot
    common = {
        "train_dataset": train_dataset,
        "eval_dataset": eval_dataset,
        "image_column_name": args.image_column_name,
        "label_column_name": args.label_column_name,
        "batch_size": args.batch_size,
        "device": device,
        "max_train_samples": args.max_train_samples,
        "max_eval_samples": args.max_eval_samples,
    }
    names = args.model_name_or_path or [None]
    labels = model_labels(names) if args.model_name_or_path else [f"random init ({args.model_preset})"]
    models, card_embeddings, card_config = [], None, None
    for name, label in zip(names, labels):
        is_card = name == card_model
        plot = spectrum_plot_path if is_card else None
        results, embeddings, config = _evaluate_model(args, protocol, name, label, common, plot)
        models.append({**results, "model_label": label} if len(names) > 1 else results)
        if is_card:
            card_results, card_embeddings, card_config = models[-1], embeddings, config

    # 4. The results: a JSON file beside the spectrum plot, and the card model's card when asked
    if len(models) == 1:
        everything = {"model_name_or_path": models[0]["model_name_or_path"], **dataset, **models[0]}
    else:
        models = [{"model_name_or_path": m["model_name_or_path"], **dataset, **m} for m in models]
        everything = {**dataset, "card_model": card_model, "models": models}
    output_file.write_text(json.dumps(everything, indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote %s and %s", output_file, spectrum_plot_path)
    if args.update_model_card:
        compared = [{key: m[key] for key in COMPARED_FIELDS} for m in models if m["model_name_or_path"] != card_model]
        card = {**dataset, **card_results, **({"compared_models": compared} if compared else {})}
        _update_card(Path(card_model), card_config, card, card_embeddings)
    for results in models:
        _log_summary(results, f"{dataset_display_name} ({args.eval_split})")
    return everything


def evaluate_command() -> None:
    """The `lejepa-evaluate` console command: `evaluate_main` on the command line (a console script's return value
    is its exit status, so the results are not returned)."""
    evaluate_main()


__all__ = [
    "EvaluationArguments",
    "backbone_loader",
    "evaluate_command",
    "evaluate_main",
    "load_config",
    "load_model",
    "load_splits",
    "model_labels",
]
