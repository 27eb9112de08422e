"""Model cards of LeJEPA checkpoints and of their exported backbones.

`build_model_card` writes the `README.md` of a LeJEPA checkpoint: Hub metadata (`library_name`, `pipeline_tag`,
tags, datasets, license, base model, `model-index`), how to load it, the full training recipe, the loss curves, the
evaluation results with the embedding spectrum, and the citation. `update_model_card` adds evaluation results to an
existing card, and `build_backbone_model_card` writes the card of a backbone exported by `trainer.export` (the
`lejepa-export-backbone` command). The evaluation section and the results behind it are `evaluation_section`'s.

The raw evaluation results rendered in a card are kept beside it in `lejepa_eval_results.json`, so that evaluations
on several datasets accumulate and a card rebuilt later keeps them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import PreTrainedConfig

from modeling_lejepa import CLS_TOKEN_BACKBONES, build_backbone, embedding_size, input_image_size, uses_cls_token

from .evaluation_section import (
    EVAL_RESULTS_NAME,
    EVAL_SECTION_END,
    EVAL_SECTION_START,
    as_result_list,
    hub_eval_results,
    merge_results,
    read_results,
    render_evaluation_section,
    splice_evaluation_section,
    write_results,
)
from .plots import plot_embedding_spectrum, plot_loss_curves

TEMPLATE_DIR = Path(__file__).resolve().parent
CARD_TEMPLATE = TEMPLATE_DIR / "template.md"
BACKBONE_CARD_TEMPLATE = TEMPLATE_DIR / "backbone_template.md"

LOSS_PLOT_NAME = "loss_curves.png"
SPECTRUM_PLOT_NAME = "embedding_spectrum.png"

BASE_TAGS = ["lejepa", "jepa", "self-supervised", "vision"]
CITATION = """@article{balestriero2025lejepa,
  title   = {LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics},
  author  = {Balestriero, Randall and LeCun, Yann},
  journal = {arXiv preprint arXiv:2511.08544},
  year    = {2025},
  url     = {https://arxiv.org/abs/2511.08544}
}"""

# (attribute of LeJepaConfig, meaning) in the order of the recipe table.
LEJEPA_SETTINGS: tuple[tuple[str, str], ...] = (
    ("lambda_sigreg", "weight of SIGReg: `loss = (1 - lambda) * prediction + lambda * SIGReg`"),
    ("sigreg_num_slices", "random unit directions of SIGReg, resampled every step"),
    ("sigreg_num_knots", "trapezoid knots of the Epps-Pulley integral"),
    ("sigreg_t_max", "integration range `[-t_max, t_max]` of the Epps-Pulley integral"),
    ("projector_num_layers", "linear layers of the projector (Linear-BN-ReLU blocks, then Linear)"),
    ("projector_hidden_size", "width of the projector's hidden layers"),
    ("projector_output_size", "dimension of the projections the loss sees"),
    ("projector_use_batch_norm", "BatchNorm in the projector's hidden blocks"),
    ("num_global_views", "global views per image (their mean projection is the target)"),
    ("num_local_views", "local views per image"),
    ("global_image_size", "side of the global views, px"),
    ("local_image_size", "side of the local views, px"),
    ("global_crop_scale", "`RandomResizedCrop` area range of the global views"),
    ("local_crop_scale", "`RandomResizedCrop` area range of the local views"),
)
# Backbone configuration attributes shown in the card when the backbone has them.
BACKBONE_SETTINGS: tuple[str, ...] = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "image_size",
    "layer_type",
    "depths",
    "hidden_sizes",
    "embedding_size",
    "architecture",
    "drop_path_rate",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)
_DISPLAY_NAMES = {
    "vit": "ViT",
    "deit": "DeiT",
    "dinov2": "DINOv2",
    "dinov2_with_registers": "DINOv2 with registers",
    "convnext": "ConvNeXt",
    "convnextv2": "ConvNeXt V2",
    "resnet": "ResNet",
    "timm_wrapper": "timm",
}


def model_card_tags(backbone_type: str) -> list[str]:
    """Hub tags of a LeJEPA model card: `lejepa`, `jepa`, `self-supervised`, `vision` and the backbone's type."""
    return BASE_TAGS + ([backbone_type] if backbone_type not in BASE_TAGS else [])


def backbone_class_name(backbone_config: PreTrainedConfig) -> str:
    """Name of the `transformers` class that `AutoModel` builds for `backbone_config` (e.g. `ViTModel`)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(backbone_config.model_type)
    if isinstance(name, (list, tuple)):
        name = name[0]
    return name or type(backbone_config).__name__.replace("Config", "Model")


def embedding_rule(backbone_type: str, exported: bool = False) -> tuple[str, str]:
    """
    How to read the LeJEPA image embedding off the backbone's outputs, in words: `modeling_lejepa.pool_embedding`
    for each kind of backbone (the CLS token of `CLS_TOKEN_BACKBONES`, else the backbone's own pooling).

    Args:
        backbone_type (`str`): `model_type` of the backbone.
        exported (`bool`, *optional*, defaults to `False`): describe a backbone exported by `trainer.export` (a
            plain `transformers` model) rather than a `LeJepaModel`, whose `pooler_output` always is the embedding.

    Returns:
        `(expression, explanation)`: a Python expression on `outputs` and a Markdown sentence.
    """
    if backbone_type in CLS_TOKEN_BACKBONES:
        if exported:
            return (
                "outputs.pooler_output",
                "the embedding is the final-layer-normed CLS token, `outputs.last_hidden_state[:, 0]`. LeJEPA "
                'trains no pooler, so the export sets the configuration\'s `pooler_act` to `"linear"` and the '
                "pooler's dense layer to the identity: `outputs.pooler_output` (and the pipeline's `pool=True`) "
                "returns exactly the same embedding, instead of going through a randomly initialised Linear + tanh.",
            )
        return "outputs.pooler_output", "the final-layer-normed CLS token, `last_hidden_state[:, 0]`"
    if backbone_type.startswith("dinov2"):
        rule = "the final-layer-normed CLS token, `last_hidden_state[:, 0]`, which is the model's `pooler_output`"
        return "outputs.pooler_output", (f"the embedding is {rule}." if exported else rule)
    if backbone_type.startswith("convnext"):
        rule = "the layer-normed global average of the last feature map, the model's `pooler_output`"
        return "outputs.pooler_output", (f"the embedding is {rule}." if exported else rule)
    if backbone_type == "resnet":
        if exported:
            return (
                "outputs.pooler_output.flatten(1)",
                "the embedding is the global average of the last feature map, `outputs.pooler_output`, of shape "
                "`(batch, channels, 1, 1)` in `ResNetModel`: flatten it to `(batch, channels)`.",
            )
        return "outputs.pooler_output", "the global average of the last feature map, flattened"
    if exported:
        return "outputs.pooler_output.flatten(1)", "the embedding is the model's `pooler_output`, flattened."
    return "outputs.pooler_output", "the backbone's pooled output, flattened"


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_format_value(v) for v in value) + ")"
    return str(value)


def _format_count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return str(count)


def backbone_facts(backbone_config: PreTrainedConfig) -> tuple[int | None, int | None]:
    """`(parameters, embedding size)` of the backbone that LeJEPA builds from `backbone_config`
    (`modeling_lejepa.build_backbone`: without the ViT pooler; `modeling_lejepa.embedding_size`), built on the meta
    device so that nothing is allocated; `(None, None)` when it cannot be built this way (e.g. timm is missing)."""
    try:
        with torch.device("meta"):
            backbone = build_backbone(backbone_config)
    except Exception:  # the figures are informative only: any failure to build the model just omits them
        return None, None
    return backbone.num_parameters(), embedding_size(backbone_config, backbone)


def _backbone_description(backbone_config: PreTrainedConfig, num_parameters: int | None) -> str:
    name = _DISPLAY_NAMES.get(backbone_config.model_type, backbone_config.model_type)
    patch_size = getattr(backbone_config, "patch_size", None)
    if isinstance(patch_size, int) and backbone_config.model_type in ("vit", "deit", "dinov2"):
        name = f"{name}/{patch_size}"
    if backbone_config.model_type == "dinov2":  # the ViT presets: DINOv2's architecture, not its weights
        name = f"ViT/{patch_size} in DINOv2's architecture"
    if num_parameters:
        return f"a {name} ({_format_count(num_parameters)} parameters)"
    return f"a {name}"


def _backbone_rows(
    backbone_config: PreTrainedConfig, num_parameters: int | None, size: int | None
) -> list[tuple[str, str]]:
    """The rows of the backbone table: architecture, parameters, embedding `size`, and `BACKBONE_SETTINGS`."""
    rows = [("Architecture", f"`{backbone_class_name(backbone_config)}` (`{backbone_config.model_type}`)")]
    if num_parameters:
        rows.append(("Parameters", f"{_format_count(num_parameters)} ({num_parameters:,})"))
    if size:
        rows.append(("Embedding size", str(size)))
    for name in BACKBONE_SETTINGS:
        value = getattr(backbone_config, name, None)
        if value is not None and value != "" and not (name == "embedding_size" and value == size):
            rows.append((f"`{name}`", _format_value(value)))
    return rows


def _lejepa_rows(model_config: PreTrainedConfig) -> list[tuple[str, str, str]]:
    return [
        (name, _format_value(getattr(model_config, name)), meaning)
        for name, meaning in LEJEPA_SETTINGS
        if hasattr(model_config, name)
    ]


def _training_rows(training_args: Any) -> list[tuple[str, str]]:
    """The settings of a `TrainingArguments` (or of its `to_dict()`) that define the training recipe."""
    if training_args is None:
        return []
    if hasattr(training_args, "to_dict"):
        args = training_args.to_dict()
        world_size = getattr(training_args, "world_size", None)
    else:
        args = dict(training_args)
        world_size = args.get("world_size")
    rows: list[tuple[str, str]] = []

    def add(label: str, key: str) -> None:
        if args.get(key) is not None:
            rows.append((label, _format_value(args[key])))

    add("Optimizer", "optim")
    add("Learning rate (peak)", "learning_rate")
    add("Weight decay", "weight_decay")
    if args.get("adam_beta1") is not None and args.get("adam_beta2") is not None:
        rows.append(("Adam betas", _format_value((args["adam_beta1"], args["adam_beta2"]))))
    add("Adam epsilon", "adam_epsilon")
    if args.get("lr_scheduler_type") is not None:
        scheduler = _format_value(args["lr_scheduler_type"])
        kwargs = args.get("lr_scheduler_kwargs")
        if isinstance(kwargs, str) and kwargs:
            kwargs = json.loads(kwargs)
        if kwargs:
            scheduler += " (" + ", ".join(f"{k}={_format_value(v)}" for k, v in kwargs.items()) + ")"
        rows.append(("Learning-rate schedule", scheduler))
    warmup = args.get("warmup_steps")
    if warmup:
        rows.append(
            ("Warmup", f"{warmup:.0%} of the steps, linear" if 0 < warmup < 1 else f"{int(warmup)} steps, linear")
        )
    if args.get("warmup_ratio"):
        rows.append(("Warmup ratio", _format_value(args["warmup_ratio"])))
    add("Batch size per device", "per_device_train_batch_size")
    add("Gradient accumulation steps", "gradient_accumulation_steps")
    if world_size:
        rows.append(("Processes", str(world_size)))
    if args.get("launch"):  # `LeJepaTrainer.launch_summary`: distributed type, backend, precision, attention, views
        rows.append(("Launch (in effect)", str(args["launch"])))
    total = args.get("total_train_batch_size")
    if total is None and world_size and args.get("per_device_train_batch_size"):
        total = args["per_device_train_batch_size"] * args.get("gradient_accumulation_steps", 1) * world_size
    if total:
        rows.append(("Global batch size", str(total)))
    if args.get("max_steps") and args["max_steps"] > 0:
        rows.append(("Training steps", str(args["max_steps"])))
    elif args.get("num_train_epochs") is not None:
        rows.append(("Epochs", _format_value(args["num_train_epochs"])))
    precision = "bf16 mixed precision" if args.get("bf16") else "fp16 mixed precision" if args.get("fp16") else "fp32"
    if args.get("tf32"):
        precision += ", TF32 matmuls"
    rows.append(("Precision", precision))
    add("Gradient clipping (max norm)", "max_grad_norm")
    add("Seed", "seed")
    return rows


def _load_log_history(output_dir: Path) -> list[dict[str, Any]] | None:
    state_file = output_dir / "trainer_state.json"
    if state_file.is_file():
        return json.loads(state_file.read_text(encoding="utf-8")).get("log_history")
    return None


def _last_losses(log_history: Sequence[Mapping[str, Any]]) -> str | None:
    last = next((entry for entry in reversed(log_history) if "loss" in entry and "step" in entry), None)
    if last is None:
        return None
    parts = [
        f"{label} {float(last[key]):.4g}"
        for key, label in (("loss", "total loss"), ("prediction_loss", "prediction"), ("sigreg_loss", "SIGReg"))
        if last.get(key) is not None
    ]
    return f"Last logged values (step {last['step']}): " + ", ".join(parts) + "."


def _card_data(
    backbone_type: str,
    dataset_names: str | Sequence[str] | None,
    license: str | None,
    base_model: str | None,
    model_name: str,
    eval_results: Sequence[Mapping[str, Any]],
) -> ModelCardData:
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    hub_results = hub_eval_results(eval_results)
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        tags=model_card_tags(backbone_type),
        datasets=list(dataset_names) if dataset_names else None,
        license=license,
        base_model=base_model,
        model_name=model_name if hub_results else None,  # only used (and written) for the model-index
        eval_results=hub_results or None,
    )


def _save(card: ModelCard, path: Path) -> None:
    """Saves `card` with a final newline (Jinja drops the template's)."""
    if not card.text.endswith("\n"):
        card.text += "\n"
    card.save(path)


def _write_card(
    template: Path,
    output_dir: Path,
    backbone_type: str,
    results: Sequence[Mapping[str, Any]],
    dataset_names: str | Sequence[str] | None,
    license: str | None,
    base_model: str | None,
    model_id: str | None,
    **fields: Any,
) -> ModelCard:
    """Renders `template` with the Hub metadata, the fields every card has and `fields`, and saves it as
    `output_dir/README.md`."""
    model_name = model_id or output_dir.resolve().name
    card = ModelCard.from_template(
        _card_data(backbone_type, dataset_names, license, base_model, model_name, results),
        template_path=str(template),
        model_name=model_name,
        repo_id=model_id or model_name,
        base_model=base_model,
        datasets=list([dataset_names] if isinstance(dataset_names, str) else dataset_names or []),
        has_image_processor=(output_dir / "preprocessor_config.json").is_file(),
        citation=CITATION,
        **_input_fields(output_dir),
        **fields,
    )
    _save(card, output_dir / "README.md")
    return card


def _input_fields(output_dir: Path) -> dict[str, Any]:
    """`keeps_values`, `num_channels` and `input_description` for images that are not 8-bit RGB: a checkpoint whose
    image processor does not convert to RGB (`trainer.data.arrays.ImageFormat.image_processor`) states its channels
    and normalisation."""
    path = output_dir / "preprocessor_config.json"
    processor = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if processor.get("do_convert_rgb") is not False or not processor.get("image_mean"):
        return {"keeps_values": False, "num_channels": 3, "input_description": None}
    mean, std = processor["image_mean"], processor["image_std"]
    rescale = processor.get("rescale_factor", 1.0) if processor.get("do_rescale") else 1.0

    def numbers(values: Sequence[float]) -> str:
        return "[" + ", ".join(f"{value:.4g}" for value in values) + "]"

    description = (
        f"**Input:** images of {len(mean)} channel(s) read with their own values (not 8-bit RGB): the image "
        f"processor multiplies the raw values by {rescale:.6g} (`rescale_factor`), resizes to the training "
        f"resolution and normalises each channel with the mean {numbers(mean)} and the standard deviation "
        f"{numbers(std)} of the training images. Give it arrays with `input_data_format` (`\"channels_last\"` for "
        f"`(H, W, C)`, `\"channels_first\"` for `(C, H, W)`), in the same band order as in training."
    )
    return {"keeps_values": True, "num_channels": len(mean), "input_description": description}


def _spectrum_plot(card_dir: Path, embeddings: np.ndarray | None) -> str | None:
    """Plots the spectrum of `embeddings` beside the card when given; the plot's name when there is one."""
    if embeddings is not None:
        plot_embedding_spectrum(embeddings, card_dir / SPECTRUM_PLOT_NAME)
    return SPECTRUM_PLOT_NAME if (card_dir / SPECTRUM_PLOT_NAME).is_file() else None


def _backbone_fields(backbone_config: PreTrainedConfig) -> dict[str, Any]:
    """The fields of the LeJEPA card's template that describe the backbone and its embedding."""
    backbone_type = backbone_config.model_type
    num_parameters, size = backbone_facts(backbone_config)
    _, rule = embedding_rule(backbone_type)
    return {
        "backbone_description": _backbone_description(backbone_config, num_parameters),
        "backbone_class": f"`{backbone_class_name(backbone_config)}`",
        "embedding_size": size or "D",
        "embedding_rule": rule,
        "unpooled_description": (
            "patch tokens, CLS first"
            if uses_cls_token(backbone_config) or backbone_type.startswith("dinov2")
            else "the last feature map"
        ),
        "is_vit": isinstance(getattr(backbone_config, "patch_size", None), int),
        "backbone_rows": _backbone_rows(backbone_config, num_parameters, size),
    }


def build_model_card(
    model_config: PreTrainedConfig,
    output_dir: str | os.PathLike,
    training_args: Any = None,
    log_history: Iterable[Mapping[str, Any]] | None = None,
    eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    dataset_names: str | Sequence[str] | None = None,
    base_model: str | None = None,
    license: str | None = "apache-2.0",
    model_id: str | None = None,
    embeddings: np.ndarray | None = None,
) -> ModelCard:
    """
    Writes `README.md`, the model card of a LeJEPA checkpoint, into `output_dir`, with its plots next to it.

    Args:
        model_config (`LeJepaConfig`): configuration of the checkpoint.
        output_dir (`str` or `os.PathLike`): the checkpoint folder (created if missing).
        training_args (`TrainingArguments` or `dict`, *optional*): the training arguments, or their `to_dict()`
            (a `dict` may add `world_size`, `total_train_batch_size` or `launch`, the trainer's `launch_summary`).
        log_history (list of `dict`, *optional*): `trainer.state.log_history`; when `None`, read from
            `output_dir/trainer_state.json` if there is one. Entries with `loss`, `prediction_loss` and `sigreg_loss`
            give the loss curves, `loss_curves.png`.
        eval_results (`dict` or list of `dict`, *optional*): results of `trainer.evaluation.evaluate_embeddings`,
            shown in the body and, for the accuracies, in the `model-index` metadata. They are saved in
            `lejepa_eval_results.json`; when `None`, the results already saved there (by an earlier card or
            `lejepa-evaluate --update_model_card`) are used.
        dataset_names (`str` or list of `str`, *optional*): Hub ids of the pretraining datasets.
        base_model (`str`, *optional*): Hub id of the model this one was initialised from.
        license (`str`, *optional*, defaults to `"apache-2.0"`): license identifier.
        model_id (`str`, *optional*): Hub repository id used in the card's code and as the model name; defaults to
            the name of `output_dir`.
        embeddings (`np.ndarray` of shape `(N, D)`, *optional*): embeddings of held-out images, plotted as the
            eigenvalue spectrum `embedding_spectrum.png` (an existing plot of that name is linked otherwise).

    Returns:
        The `huggingface_hub.ModelCard`, also saved as `output_dir/README.md`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    backbone_config = model_config.backbone_config
    if log_history is None:
        log_history = _load_log_history(output_dir)
    log_history = list(log_history or [])
    loss_plot = plot_loss_curves(log_history, output_dir / LOSS_PLOT_NAME) if log_history else None

    if eval_results is not None:
        results = as_result_list(eval_results)
        write_results(output_dir, results)
    else:
        results = read_results(output_dir)
    spectrum_plot = _spectrum_plot(output_dir, embeddings)

    return _write_card(
        CARD_TEMPLATE,
        output_dir,
        backbone_config.model_type,
        results,
        dataset_names,
        license,
        base_model,
        model_id,
        image_size=input_image_size(model_config),
        lejepa_rows=_lejepa_rows(model_config),
        training_rows=_training_rows(training_args),
        loss_plot=LOSS_PLOT_NAME if loss_plot else None,
        last_losses=_last_losses(log_history),
        evaluation_section=render_evaluation_section(results, spectrum_plot),
        **_backbone_fields(backbone_config),
    )


def update_model_card(
    card_dir: str | os.PathLike,
    eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    embeddings: np.ndarray | None = None,
) -> ModelCard:
    """
    Adds evaluation results to the model card `card_dir/README.md` (written by `build_model_card` or
    `build_backbone_model_card`): results for the same dataset, configuration and split are replaced, others kept
    (the models compared on a dataset are merged by name, `evaluation_section.merge_results`).
    The `model-index` metadata and the evaluation section of the body are rewritten; the rest is left as is.

    Args:
        card_dir (`str` or `os.PathLike`): folder holding `README.md`.
        eval_results (`dict` or list of `dict`): results of `trainer.evaluation.evaluate_embeddings`.
        embeddings (`np.ndarray` of shape `(N, D)`, *optional*): held-out embeddings to plot as
            `embedding_spectrum.png`.

    Returns:
        The updated `huggingface_hub.ModelCard`, also saved.

    Raises:
        `FileNotFoundError` if `card_dir` has no `README.md`.
    """
    card_dir = Path(card_dir)
    card_path = card_dir / "README.md"
    if not card_path.is_file():
        raise FileNotFoundError(f"No model card at {card_path}; build one first with `build_model_card`.")
    card = ModelCard.load(card_path)
    results = merge_results(read_results(card_dir), as_result_list(eval_results))
    write_results(card_dir, results)
    spectrum_plot = _spectrum_plot(card_dir, embeddings)

    card.data.model_name = card.data.model_name or card_dir.resolve().name
    card.data.eval_results = hub_eval_results(results) or None
    card.text = splice_evaluation_section(card.text, render_evaluation_section(results, spectrum_plot))
    _save(card, card_path)
    return card


def build_backbone_model_card(
    backbone_config: PreTrainedConfig,
    output_dir: str | os.PathLike,
    lejepa_config: PreTrainedConfig | None = None,
    eval_results: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    dataset_names: str | Sequence[str] | None = None,
    base_model: str | None = None,
    license: str | None = "apache-2.0",
    model_id: str | None = None,
) -> ModelCard:
    """
    Writes `README.md` for a backbone exported by `trainer.export`: the same Hub metadata as the LeJEPA card, a
    statement that it is the exported backbone, how to load it without custom code, and its embedding rule.

    Args:
        backbone_config (`PreTrainedConfig`): configuration of the exported backbone.
        output_dir (`str` or `os.PathLike`): the export folder.
        lejepa_config (`LeJepaConfig`, *optional*): configuration of the source checkpoint, for the pretraining
            settings table and the image size.
        eval_results (`dict` or list of `dict`, *optional*): evaluation results of the source model, which the
            exported backbone shares (identical embeddings); saved in `lejepa_eval_results.json`.
        dataset_names (`str` or list of `str`, *optional*): Hub ids of the pretraining datasets.
        base_model (`str`, *optional*): Hub id of the source LeJEPA model.
        license (`str`, *optional*, defaults to `"apache-2.0"`): license identifier.
        model_id (`str`, *optional*): Hub repository id used in the card's code; defaults to the folder name.

    Returns:
        The `huggingface_hub.ModelCard`, also saved as `output_dir/README.md`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    backbone_type = backbone_config.model_type
    results = as_result_list(eval_results)
    if results:
        write_results(output_dir, results)
    spectrum_plot = _spectrum_plot(output_dir, None)
    expression, rule = embedding_rule(backbone_type, exported=True)
    native_size = getattr(backbone_config, "image_size", None)
    num_parameters, size = backbone_facts(backbone_config)
    size = size or "D"
    pooled = f"[[{size} floats]]"
    if backbone_type == "resnet":
        pooled = f"nested lists of shape (1, {size}, 1, 1): flatten them"
    return _write_card(
        BACKBONE_CARD_TEMPLATE,
        output_dir,
        backbone_type,
        results,
        dataset_names,
        license,
        base_model,
        model_id,
        backbone_class=backbone_class_name(backbone_config),
        image_size=input_image_size(lejepa_config if lejepa_config is not None else backbone_config),
        native_image_size=native_size,
        is_vit=isinstance(native_size, int) and isinstance(getattr(backbone_config, "patch_size", None), int),
        embedding_expression=expression,
        embedding_rule=rule,
        embedding_size=size,
        timm_architecture=getattr(backbone_config, "architecture", None) if backbone_type == "timm_wrapper" else None,
        pipeline_pooled_description=pooled,
        backbone_rows=_backbone_rows(backbone_config, num_parameters, None if size == "D" else size),
        lejepa_rows=_lejepa_rows(lejepa_config) if lejepa_config is not None else [],
        evaluation_section=render_evaluation_section(results, spectrum_plot) if results or spectrum_plot else "",
    )


__all__ = [
    "CITATION",
    "EVAL_RESULTS_NAME",
    "EVAL_SECTION_END",
    "EVAL_SECTION_START",
    "SPECTRUM_PLOT_NAME",
    "backbone_facts",
    "build_backbone_model_card",
    "build_model_card",
    "embedding_rule",
    "hub_eval_results",
    "model_card_tags",
    "render_evaluation_section",
    "update_model_card",
]
