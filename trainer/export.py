"""
Export of the backbone of a LeJEPA checkpoint to its native `transformers` architecture.

The result is a plain `ViTModel` (or `Dinov2Model`, `ConvNextModel`, `ResNetModel`, `TimmWrapperModel`, ...) folder
that loads with `AutoModel.from_pretrained(folder)` with no custom code and no `trust_remote_code`, and gives the same
embeddings as the LeJEPA model's `pooler_output`. It holds `config.json`, `model.safetensors`, the image processor
config (copied from the checkpoint, or a default one) and a model card.

ViT and DeiT backbones: LeJEPA's embedding is the final-normed CLS token and LeJEPA trains no pooler, but a plain
`ViTModel` always builds its Linear + tanh pooler, so a folder without pooler weights would load with a randomly
initialised one (and `pooler_output`, the pipeline's `pool=True`, would be noise). The export therefore writes
`pooler_act="linear"` in the config and an identity dense layer: `pooler_output` then equals
`last_hidden_state[:, 0]` exactly, and loading reports no missing weights.

timm backbones (`TimmWrapperConfig`): the folder is timm's own format (`config.json` with the `architecture`,
`model_args` and `pretrained_cfg`, and `model.safetensors` with timm's parameter names, written by
`timm.models.save_for_hf`), which `timm.create_model("local-dir:FOLDER", pretrained=True)` loads, and once pushed
`timm.create_model("hf-hub:org/name", pretrained=True)`; `AutoModel` loads the same folder as a `TimmWrapperModel`.
Both give the LeJEPA embedding.

The `lejepa-export-backbone` command (`trainer.cli.export_main`) runs `export_backbone`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from transformers import AutoImageProcessor, AutoModel, PreTrainedConfig, PreTrainedModel

from model_cards.card import EVAL_RESULTS_NAME, SPECTRUM_PLOT_NAME, build_backbone_model_card
from modeling_lejepa import LeJepaConfig, LeJepaModel, uses_cls_token

from .evaluation import default_image_processor, embed, quiet_loading

logger = logging.getLogger(__name__)

IMAGE_PROCESSOR_FILES = ("preprocessor_config.json",)
# Prefixes of the weights of LeJEPA heads, which the backbone export drops.
HEAD_PREFIXES = ("projector.", "norm.", "classifier.", "sigreg.")


def native_backbone(model: LeJepaModel) -> PreTrainedModel:
    """
    The backbone of `model` as a standalone `transformers` model whose outputs give the LeJEPA embedding.

    For ViT/DeiT (built by LeJEPA without a pooler, `modeling_lejepa.uses_cls_token`) this is a new model of the same
    class with a pooler whose activation is `"linear"` and whose dense layer is the identity, holding the same
    weights; for other backbones it is `model.backbone` itself.
    """
    backbone = model.backbone
    config = backbone.config
    if not uses_cls_token(config) or getattr(backbone, "pooler", None) is not None:
        return backbone
    config = copy.deepcopy(config)
    config.pooler_act = "linear"
    config.pooler_output_size = config.hidden_size
    parameter = next(backbone.parameters())
    native = type(backbone)(config).to(device=parameter.device, dtype=parameter.dtype)
    missing, unexpected = native.load_state_dict(backbone.state_dict(), strict=False)
    if sorted(missing) != ["pooler.dense.bias", "pooler.dense.weight"] or unexpected:
        raise RuntimeError(f"Unexpected backbone weights: missing {missing}, unexpected {unexpected}.")
    with torch.no_grad():
        native.pooler.dense.weight.copy_(torch.eye(config.hidden_size))
        native.pooler.dense.bias.zero_()
    return native.eval()


def _load_lejepa(checkpoint_dir: str | os.PathLike) -> LeJepaModel:
    """Loads the backbone of a LeJEPA checkpoint of any head, and checks no backbone weight is missing."""
    config_dict, _ = PreTrainedConfig.get_config_dict(checkpoint_dir)
    if config_dict.get("model_type") != LeJepaConfig.model_type:
        raise ValueError(
            f"{checkpoint_dir} is not a LeJEPA checkpoint (its model_type is {config_dict.get('model_type')!r}, "
            f"not {LeJepaConfig.model_type!r})."
        )
    with quiet_loading():
        model, info = LeJepaModel.from_pretrained(checkpoint_dir, output_loading_info=True)
    if info["missing_keys"]:
        raise ValueError(
            f"{checkpoint_dir} lacks backbone weights {sorted(info['missing_keys'])[:5]}: it is not a trained "
            "LeJEPA checkpoint."
        )
    other = sorted(key for key in info["unexpected_keys"] if not key.startswith(HEAD_PREFIXES))
    if other:
        logger.warning(
            "Weights of %s that are neither backbone nor LeJEPA head were ignored: %s", checkpoint_dir, other
        )
    return model.eval()


def export_backbone(
    checkpoint_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    model_id: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    dataset_names: list[str] | None = None,
    write_default_image_processor: bool = True,
    verify: bool = True,
) -> Path:
    """
    Writes the backbone of a LeJEPA checkpoint to `output_dir` in its native `transformers` architecture.

    Args:
        checkpoint_dir (`str` or `os.PathLike`): a LeJEPA checkpoint of any head (`LeJepaModel`,
            `LeJepaForPreTraining`, `LeJepaForImageClassification`), a local folder or a Hub id.
        output_dir (`str` or `os.PathLike`): where to write the export (created if missing).
        model_id (`str`, *optional*): Hub id the export will have, used in its model card.
        base_model (`str`, *optional*): Hub id of the LeJEPA checkpoint, the card's `base_model`; defaults to the
            source card's model name when that is a Hub id (`org/name`).
        license (`str`, *optional*): defaults to the source card's license, else `"apache-2.0"`.
        dataset_names (list of `str`, *optional*): pretraining datasets; default to the source card's.
        write_default_image_processor (`bool`, *optional*, defaults to `True`): when the checkpoint has no image
            processor config, write `default_image_processor(config.global_image_size)` (ImageNet's RGB statistics:
            3-channel models only).
        verify (`bool`, *optional*, defaults to `True`): reload the export with `AutoModel` (no custom code) and check
            that it gives the LeJEPA embeddings of two random images.

    Returns:
        The output folder.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = _load_lejepa(checkpoint_dir)
    native = native_backbone(model)
    source = Path(checkpoint_dir)
    image_size = model.config.global_image_size
    if native.config.model_type == "timm_wrapper":
        save_timm_native(native, output_dir, image_size, _image_processor_of(source), model.config.num_channels)
    else:
        native.save_pretrained(output_dir)
    copied = _copy_image_processor(checkpoint_dir, output_dir)
    if not copied and write_default_image_processor and model.config.num_channels == 3:
        default_image_processor(image_size).save_pretrained(output_dir)
    elif not copied:
        logger.warning("The checkpoint has no image processor config, so the export has none either.")
    native_size = getattr(native.config, "image_size", None)
    if uses_cls_token(native.config) and isinstance(native_size, int) and native_size != image_size:
        logger.warning(
            "The backbone's native resolution is %d px but LeJEPA views are %d px: pass "
            "`interpolate_pos_encoding=True` to the exported model at %d px.",
            native_size,
            image_size,
            image_size,
        )
    card_fields = _source_card_fields(source, output_dir, base_model, license, dataset_names)
    build_backbone_model_card(native.config, output_dir, lejepa_config=model.config, model_id=model_id, **card_fields)
    if verify:
        _verify_export(model, output_dir, image_size)
    return output_dir


def _copy_image_processor(checkpoint_dir: str | os.PathLike, output_dir: Path) -> bool:
    """Copies the checkpoint's image processor config (from a folder, or from the Hub) to `output_dir`; `False` when
    it has none."""
    source = Path(checkpoint_dir)
    if source.is_dir():
        copied = False
        for name in IMAGE_PROCESSOR_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, output_dir / name)
                copied = True
        return copied
    try:
        AutoImageProcessor.from_pretrained(str(checkpoint_dir)).save_pretrained(output_dir)
    except OSError:
        return False
    return True


def _source_card_fields(
    source: Path,
    output_dir: Path,
    base_model: str | None,
    license: str | None,
    dataset_names: list[str] | None,
) -> dict[str, Any]:
    """The export card's `eval_results`, `dataset_names`, `base_model` and `license`: those given, else the source
    checkpoint's (its card, its saved evaluation results, whose spectrum plot is copied: the embeddings are the
    same)."""
    eval_results = None
    if source.is_dir() and (source / "README.md").is_file():
        source_card = ModelCard.load(source / "README.md")
        dataset_names = dataset_names or source_card.data.datasets
        license = license or source_card.data.license
        if base_model is None and source_card.data.model_name and "/" in source_card.data.model_name:
            base_model = source_card.data.model_name
    if source.is_dir() and (source / EVAL_RESULTS_NAME).is_file():
        eval_results = json.loads((source / EVAL_RESULTS_NAME).read_text(encoding="utf-8"))
        if (source / SPECTRUM_PLOT_NAME).is_file():
            shutil.copyfile(source / SPECTRUM_PLOT_NAME, output_dir / SPECTRUM_PLOT_NAME)
    return {
        "eval_results": eval_results,
        "dataset_names": dataset_names,
        "base_model": base_model,
        "license": license or "apache-2.0",
    }


def _image_processor_of(source: Path) -> Any:
    """The checkpoint's image processor, or `None` when it has none."""
    try:
        return AutoImageProcessor.from_pretrained(str(source))
    except (OSError, ValueError):
        return None


def save_timm_native(
    native: PreTrainedModel, output_dir: Path, image_size: int, image_processor: Any = None, num_channels: int = 3
) -> None:
    """
    Writes a `TimmWrapperModel`'s timm model in timm's own format (`timm.models.save_for_hf`, safetensors), with the
    LeJEPA views' resolution and channels and, when given, the image processor's normalisation as its
    `pretrained_cfg`.
    """
    import timm

    data_config = {"input_size": (num_channels, image_size, image_size), "crop_pct": 1.0}
    if image_processor is not None and getattr(image_processor, "image_mean", None) is not None:
        data_config.update(mean=tuple(image_processor.image_mean), std=tuple(image_processor.image_std))
    timm.models.save_for_hf(native.timm_model, output_dir, safe_serialization=True, data_config=data_config)
    config_path = output_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    # `num_classes` lives at the config's root (0: the pooled features); a copy in `model_args` makes transformers'
    # `TimmWrapperModel`, which passes `num_classes=0` itself, fail on a duplicate keyword
    config.get("model_args", {}).pop("num_classes", None)
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def _verify_export(model: LeJepaModel, output_dir: Path, image_size: int) -> None:
    """Reloads the export with plain `AutoModel` (and, for timm backbones, `timm.create_model`) and checks its
    embeddings (`trainer.evaluation.embed`) against the LeJEPA model's."""
    exported = AutoModel.from_pretrained(output_dir).eval()
    if type(exported).__module__.startswith("transformers_modules") or "modeling_lejepa" in type(exported).__module__:
        raise RuntimeError(f"The export loaded custom code ({type(exported)}).")
    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, model.config.num_channels, image_size, image_size, generator=generator)
    pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
    embeddings = {"AutoModel": lambda x: embed(exported.to(parameter.device), x)}
    if model.config.backbone_config.model_type == "timm_wrapper":
        import timm

        timm_model = timm.create_model(f"local-dir:{output_dir}", pretrained=True).eval().to(parameter.device)
        embeddings["timm.create_model"] = lambda x: timm_model(x).flatten(1)
    with torch.no_grad():
        expected = model(pixel_values).pooler_output
        for loader, embedding in embeddings.items():
            actual = embedding(pixel_values)
            tolerance = 1e-5 if parameter.dtype == torch.float32 else 1e-2
            if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=tolerance, rtol=tolerance):
                raise RuntimeError(
                    f"The exported backbone's embeddings, loaded with {loader}, differ from the LeJEPA model's (max "
                    f"abs difference {(actual - expected).abs().max().item():.3g})."
                )


__all__ = ["export_backbone", "native_backbone", "save_timm_native"]
