#!/usr/bin/env python
"""
Exports the backbone of a LeJEPA checkpoint to its native `transformers` architecture.

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

Usage:

```bash
python export_backbone.py CHECKPOINT OUTPUT_DIR [--model_id org/name-backbone] [--base_model org/name]
```
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard
from transformers import AutoImageProcessor, AutoModel, HfArgumentParser, PreTrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from model_cards.card import CLS_TOKEN_BACKBONES, EVAL_RESULTS_NAME, SPECTRUM_PLOT_NAME, build_backbone_model_card
from modeling_lejepa import LeJepaConfig, LeJepaModel
from run_evaluation import default_image_processor

logger = logging.getLogger(__name__)

IMAGE_PROCESSOR_FILES = ("preprocessor_config.json",)
# Prefixes of the weights of LeJEPA heads, which the backbone export drops.
HEAD_PREFIXES = ("projector.", "norm.", "classifier.", "sigreg.")


def native_backbone(model: LeJepaModel) -> PreTrainedModel:
    """
    The backbone of `model` as a standalone `transformers` model whose outputs give the LeJEPA embedding.

    For ViT/DeiT (built by LeJEPA without a pooler) this is a new model of the same class with a pooler whose
    activation is `"linear"` and whose dense layer is the identity, holding the same weights; for other backbones it
    is `model.backbone` itself.
    """
    backbone = model.backbone
    config = backbone.config
    if config.model_type not in CLS_TOKEN_BACKBONES or getattr(backbone, "pooler", None) is not None:
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


def native_embedding(model: PreTrainedModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """The LeJEPA embedding from an exported backbone: `pooler_output` flattened to `(batch, dim)` (ViT position
    embeddings are interpolated when the model supports it, as `LeJepaModel` does)."""
    kwargs = {}
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        kwargs["interpolate_pos_encoding"] = True
    return model(pixel_values=pixel_values, **kwargs).pooler_output.flatten(1)


def _load_lejepa(checkpoint_dir: str | os.PathLike) -> LeJepaModel:
    """Loads the backbone of a LeJEPA checkpoint of any head, and checks no backbone weight is missing."""
    config_dict, _ = PreTrainedConfig.get_config_dict(checkpoint_dir)
    if config_dict.get("model_type") != LeJepaConfig.model_type:
        raise ValueError(
            f"{checkpoint_dir} is not a LeJEPA checkpoint (its model_type is {config_dict.get('model_type')!r}, "
            f"not {LeJepaConfig.model_type!r})."
        )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the head weights, dropped on purpose
    try:
        model, info = LeJepaModel.from_pretrained(checkpoint_dir, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
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
            processor config, write `default_image_processor(config.global_image_size)`.
        verify (`bool`, *optional*, defaults to `True`): reload the export with `AutoModel` (no custom code) and check
            that it gives the LeJEPA embeddings of two random images.

    Returns:
        The output folder.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = _load_lejepa(checkpoint_dir)
    lejepa_config = model.config
    native = native_backbone(model)
    source = Path(checkpoint_dir)
    image_size = lejepa_config.global_image_size
    if native.config.model_type == "timm_wrapper":
        save_timm_native(native, output_dir, image_size, _image_processor_of(source))
    else:
        native.save_pretrained(output_dir)

    copied = False
    if source.is_dir():
        for name in IMAGE_PROCESSOR_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, output_dir / name)
                copied = True
    else:
        try:
            AutoImageProcessor.from_pretrained(str(checkpoint_dir)).save_pretrained(output_dir)
            copied = True
        except OSError:
            pass
    if not copied and write_default_image_processor:
        default_image_processor(image_size).save_pretrained(output_dir)
    native_size = getattr(native.config, "image_size", None)
    if native.config.model_type in CLS_TOKEN_BACKBONES and isinstance(native_size, int) and native_size != image_size:
        logger.warning(
            "The backbone's native resolution is %d px but LeJEPA views are %d px: pass "
            "`interpolate_pos_encoding=True` to the exported model at %d px.",
            native_size,
            image_size,
            image_size,
        )

    eval_results = None
    if source.is_dir() and (source / "README.md").is_file():
        source_card = ModelCard.load(source / "README.md")
        dataset_names = dataset_names or source_card.data.datasets
        license = license or source_card.data.license
        if base_model is None and source_card.data.model_name and "/" in source_card.data.model_name:
            base_model = source_card.data.model_name
    if source.is_dir() and (source / EVAL_RESULTS_NAME).is_file():  # identical embeddings: the results carry over
        eval_results = json.loads((source / EVAL_RESULTS_NAME).read_text(encoding="utf-8"))
        if (source / SPECTRUM_PLOT_NAME).is_file():
            shutil.copyfile(source / SPECTRUM_PLOT_NAME, output_dir / SPECTRUM_PLOT_NAME)
    build_backbone_model_card(
        native.config,
        output_dir,
        lejepa_config=lejepa_config,
        eval_results=eval_results,
        dataset_names=dataset_names,
        base_model=base_model,
        license=license or "apache-2.0",
        model_id=model_id,
    )
    if verify:
        _verify_export(model, output_dir, image_size)
    return output_dir


def _image_processor_of(source: Path) -> Any:
    """The checkpoint's image processor, or `None` when it has none."""
    try:
        return AutoImageProcessor.from_pretrained(str(source))
    except (OSError, ValueError):
        return None


def save_timm_native(native: PreTrainedModel, output_dir: Path, image_size: int, image_processor: Any = None) -> None:
    """
    Writes a `TimmWrapperModel`'s timm model in timm's own format (`timm.models.save_for_hf`, safetensors), with the
    LeJEPA views' resolution and, when given, the image processor's normalisation as its `pretrained_cfg`.
    """
    import timm

    data_config = {"input_size": (3, image_size, image_size), "crop_pct": 1.0}
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
    embeddings against the LeJEPA model's."""
    exported = AutoModel.from_pretrained(output_dir).eval()
    if type(exported).__module__.startswith("transformers_modules") or "modeling_lejepa" in type(exported).__module__:
        raise RuntimeError(f"The export loaded custom code ({type(exported)}).")
    parameter = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, image_size, image_size, generator=generator)
    pixel_values = pixel_values.to(device=parameter.device, dtype=parameter.dtype)
    embeddings = {"AutoModel": lambda x: native_embedding(exported.to(parameter.device), x)}
    if model.config.backbone_config.model_type == "timm_wrapper":
        import timm

        timm_model = timm.create_model(f"local-dir:{output_dir}", pretrained=True).eval().to(parameter.device)
        embeddings["timm.create_model"] = lambda x: timm_model(x).flatten(1)
    with torch.no_grad():
        expected = model(pixel_values).pooler_output
        for loader, embed in embeddings.items():
            actual = embed(pixel_values)
            tolerance = 1e-5 if parameter.dtype == torch.float32 else 1e-2
            if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=tolerance, rtol=tolerance):
                raise RuntimeError(
                    f"The exported backbone's embeddings, loaded with {loader}, differ from the LeJEPA model's (max "
                    f"abs difference {(actual - expected).abs().max().item():.3g})."
                )


@dataclass
class ExportArguments:
    """Options of `export_backbone.py`, besides the positional CHECKPOINT and OUTPUT_DIR."""

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


def main(argv: list[str] | None = None) -> Path:
    parser = HfArgumentParser(
        ExportArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint_dir", help="LeJEPA checkpoint (folder or Hub id), any head.")
    parser.add_argument("output_dir", help="Folder to write the native backbone to.")
    args, paths = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = export_backbone(
        paths.checkpoint_dir,
        paths.output_dir,
        model_id=args.model_id,
        base_model=args.base_model,
        license=args.license,
        dataset_names=args.dataset_names,
        write_default_image_processor=args.write_default_image_processor,
        verify=args.verify,
    )
    logger.info("Exported the backbone of %s to %s", paths.checkpoint_dir, output_dir)
    return output_dir


if __name__ == "__main__":
    main(sys.argv[1:])
