#!/usr/bin/env python
"""
Frozen-backbone evaluation of a LeJEPA (or any `transformers` vision) backbone on a labelled image dataset.

Each image of a train and an eval split gives one embedding (the model's `pooler_output`, without augmentation), and:

- **k-NN**: each eval embedding is classified by its `k` (default 20) nearest train embeddings under cosine
  similarity. By default the votes are weighted by `exp(similarity / T)` with `T = 0.07`, the protocol of DINO;
  `--knn_temperature 0` gives a plain majority vote (ties go to the smallest label).
- **Linear probe**: by default a multinomial logistic regression (scikit-learn, L-BFGS, L2 with `C = 1`) on
  embeddings standardised with the train split's mean and standard deviation; `--linear_probe layernorm_linear`
  trains a LayerNorm + Linear head (as in `LeJepaForImageClassification`) with AdamW on the frozen embeddings instead.
- **Isotropy**: the effective rank of the eval embeddings' covariance (`exp` of the entropy of its normalised
  eigenvalues, between 1 and the embedding size) and the SIGReg statistic (Epps-Pulley against a standard normal,
  averaged over random directions drawn with a fixed seed, in float64) of the raw eval embeddings.

The metrics are computed by the `evaluate` module `trainer/metrics/frozen_embedding_eval` (loaded from its local
folder: no download), which works on its own for embeddings from anywhere. Without `--dataset_name`, a built-in
dataset of `run_pretraining.py` is used, with the same splits (`--builtin_dataset`: crops of 17 photographs by
default, or the digits that ship with scikit-learn, upsampled to the model's image size). `--random_init_baseline` and
`--raw_pixel_baseline` add the same metrics for a random backbone of the same shape and for the raw pixels. Results
go to a JSON file, the eigenvalue spectrum to a PNG beside it, and, with `--update_model_card`, into the checkpoint's
model card.

Examples:

    python run_evaluation.py --model_name_or_path outputs/photos --random_init_baseline --raw_pixel_baseline \
        --update_model_card
    python run_evaluation.py --model_name_or_path outputs/vitb --dataset_name uoft-cs/cifar10 \
        --image_column_name img --eval_split test --output_file cifar10_eval.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoModel, HfArgumentParser, PreTrainedConfig, ViTImageProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging as hf_logging
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from model_cards import build_model_card, plot_embedding_spectrum, update_model_card
from model_cards.card import SPECTRUM_PLOT_NAME
from modeling_lejepa import LeJepaConfig, LeJepaModel
from trainer.metrics import frozen_embedding_protocol, load_frozen_embedding_eval

logger = logging.getLogger(__name__)

LINEAR_PROBES = ("logistic_regression", "layernorm_linear")


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing and embeddings
# ---------------------------------------------------------------------------------------------------------------------


def image_size_of(config: PreTrainedConfig) -> int:
    """Resolution of a model's views: `global_image_size` of a LeJEPA config, else the backbone's `image_size`, else
    224."""
    size = getattr(config, "global_image_size", None) or getattr(config, "image_size", None) or 224
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def default_image_processor(image_size: int) -> ViTImageProcessor:
    """Resize to `image_size` x `image_size`, rescale to [0, 1] and normalise with the ImageNet mean and standard
    deviation: LeJEPA's preprocessing of evaluation images when a checkpoint has no image processor config."""
    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )


def load_image_processor(model_name_or_path: str | os.PathLike | None, config: PreTrainedConfig) -> Any:
    """The checkpoint's image processor if it has one (`AutoImageProcessor`), else `default_image_processor` at the
    model's resolution."""
    if model_name_or_path is not None:
        try:
            return AutoImageProcessor.from_pretrained(model_name_or_path)
        except (OSError, ValueError):
            logger.info(
                "%s has no image processor config: resizing and normalising with ImageNet statistics.",
                model_name_or_path,
            )
    return default_image_processor(image_size_of(config))


class RawPixelEmbedding(nn.Module):
    """
    The raw-pixel baseline of a frozen evaluation, as a model: the "embedding" of an image is its preprocessed
    `pixel_values` (resized to `image_size`, rescaled and normalised by the same image processor as the model's)
    flattened to `3 * image_size**2` values. It has no parameters and goes through `extract_embeddings`,
    `compute_embedding_metrics` and `evaluate_embeddings` exactly as a model does, so its k-NN and linear-probe
    accuracies are those of the same protocol on the pixels the model sees.

    Args:
        image_size (`int`): the model's input resolution (its `global_image_size`), reported by `image_size_of`.
    """

    def __init__(self, image_size: int):
        super().__init__()
        if image_size < 1:
            raise ValueError(f"`image_size` must be positive, got {image_size}.")
        self.config = PreTrainedConfig(image_size=image_size)

    def forward(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
        """`pixel_values` `(B, C, H, W)` -> `pooler_output` `(B, C * H * W)`."""
        return BaseModelOutputWithPooling(last_hidden_state=pixel_values, pooler_output=pixel_values.flatten(1))


def raw_pixels_like(model: nn.Module) -> RawPixelEmbedding:
    """The raw-pixel baseline at `model`'s input resolution (see `RawPixelEmbedding`)."""
    return RawPixelEmbedding(image_size_of(_embedding_module(model).config))


def _embedding_module(model: nn.Module) -> nn.Module:
    """The module whose outputs carry the embedding: the `LeJepaModel` inside a LeJEPA head model, else `model`."""
    inner = getattr(model, "lejepa", None)
    return inner if isinstance(inner, nn.Module) else model


def embed(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """
    Image embeddings of a batch: `pooler_output` flattened to `(batch, dim)` (for `LeJepaModel`, the LeJEPA embedding;
    for an exported backbone, the same), else the first token of `last_hidden_state` (a ViT without pooler), else the
    spatial mean of a feature map.
    """
    outputs = _embedding_module(model)(pixel_values=pixel_values)
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None:
        hidden = outputs.last_hidden_state
        pooled = hidden[:, 0] if hidden.dim() == 3 else hidden.mean(dim=tuple(range(2, hidden.dim())))
    return pooled.flatten(1)


@torch.no_grad()
def extract_embeddings(
    model: nn.Module,
    dataset: Iterable[dict[str, Any]],
    image_processor: Any = None,
    image_column_name: str = "image",
    label_column_name: str = "label",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    max_samples: int | None = None,
    desc: str = "Embedding",
) -> tuple[np.ndarray, np.ndarray]:
    """
    Embeds every image of a `datasets.Dataset` (or `IterableDataset`) with the frozen model.

    Args:
        model (`nn.Module`): a `LeJepaModel`, a LeJEPA model with a head (its `.lejepa` is used), or any
            `transformers` vision model (see `embed`).
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): rows with an image and a label column.
        image_processor (*optional*): turns a list of PIL images into `pixel_values`; defaults to
            `default_image_processor` at the model's resolution.
        image_column_name (`str`, *optional*, defaults to `"image"`): column of the images.
        label_column_name (`str`, *optional*, defaults to `"label"`): column of the labels.
        batch_size (`int`, *optional*, defaults to 64): images per forward pass.
        device (`str` or `torch.device`, *optional*): defaults to the model's device.
        max_samples (`int`, *optional*): stop after this many images.
        desc (`str`, *optional*): label of the progress bar.

    Returns:
        `(embeddings, labels)`: float32 array `(N, D)` and the labels as an array `(N,)`. Images that fail to decode
        are skipped with a warning (with their labels).
    """
    from trainer.data import ImageDecodeError, decode_image, to_rgb_image

    module = _embedding_module(model)
    parameter = next(module.parameters(), None)  # None for `RawPixelEmbedding`
    dtype = parameter.dtype if parameter is not None else torch.float32
    if device is None:
        device = parameter.device if parameter is not None else "cpu"
    device = torch.device(device)
    if image_processor is None:
        image_processor = default_image_processor(image_size_of(module.config))
    was_training = module.training
    module.eval()
    total = len(dataset) if hasattr(dataset, "__len__") else None
    if max_samples is not None:
        total = min(total, max_samples) if total is not None else max_samples
    embeddings, labels, seen, skipped = [], [], 0, 0
    try:
        with tqdm(total=total, desc=desc, unit="img") as progress:
            for batch in dataset.iter(batch_size=batch_size):
                values, targets = batch[image_column_name], batch[label_column_name]
                if max_samples is not None:
                    values, targets = values[: max_samples - seen], targets[: max_samples - seen]
                images, kept = [], []
                for value, target in zip(values, targets):
                    try:
                        images.append(to_rgb_image(decode_image(value)))
                        kept.append(target)
                    except ImageDecodeError as error:
                        skipped += 1
                        logger.warning("Skipping an image that does not decode: %s", error)
                seen += len(values)
                progress.update(len(values))
                if images:
                    pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
                    pixel_values = pixel_values.to(device=device, dtype=dtype)
                    embeddings.append(embed(module, pixel_values).float().cpu())
                    labels.extend(kept)
                if max_samples is not None and seen >= max_samples:
                    break
    finally:
        module.train(was_training)
    if skipped:
        logger.warning("%d of %d images could not be decoded and were skipped.", skipped, seen)
    if not embeddings:
        raise ValueError("The dataset gave no image to embed.")
    return torch.cat(embeddings).numpy(), np.asarray(labels)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics on embeddings
# ---------------------------------------------------------------------------------------------------------------------


# The k-NN, the linear probes, the effective rank and the Epps-Pulley statistic are those of the `evaluate` module
# `trainer/metrics/frozen_embedding_eval` (its one implementation).
_PROTOCOL = frozen_embedding_protocol()
LINEAR_PROBES = _PROTOCOL.LINEAR_PROBES
knn_predict = _PROTOCOL.knn_predict


def linear_probe_predict(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    query_embeddings: np.ndarray,
    method: str = "logistic_regression",
    epochs: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """
    Linear classification of frozen embeddings (the `frozen_embedding_eval` module's probes).

    Args:
        train_embeddings (`np.ndarray` of shape `(N, D)`): training embeddings.
        train_labels (`np.ndarray` of shape `(N,)`): their integer labels.
        query_embeddings (`np.ndarray` of shape `(Q, D)`): embeddings to classify.
        method (`str`, *optional*, defaults to `"logistic_regression"`): `"logistic_regression"` (scikit-learn
            multinomial logistic regression, L-BFGS, `C = 1`, one BLAS thread, on embeddings standardised with the
            training mean and standard deviation) or `"layernorm_linear"` (LayerNorm + Linear, AdamW at 1e-2 with
            weight decay 1e-4, cosine schedule, batch 256, for `epochs` epochs).
        epochs (`int`, *optional*, defaults to 100): epochs of the `"layernorm_linear"` probe.
        seed (`int`, *optional*, defaults to 0): seed of the probe's initialisation and batch order.

    Returns:
        `np.ndarray` of shape `(Q,)`: the predicted labels.
    """
    predictions, converged = _PROTOCOL.linear_probe_predict(
        train_embeddings, train_labels, query_embeddings, method=method, epochs=epochs, seed=seed
    )
    if not converged:
        logger.warning("The logistic regression did not fully converge.")
    return predictions


def sigreg_statistic(
    embeddings: np.ndarray, num_slices: int = 1024, num_knots: int = 17, t_max: float = 3.0, seed: int = 0
) -> float:
    """
    The SIGReg statistic of raw embeddings: the Epps-Pulley statistic (against a standard normal, times `N`) of their
    projections on `num_slices` random unit directions (numpy's `default_rng(seed)`), averaged over directions, in
    float64 (the `frozen_embedding_eval` module's `epps_pulley`). It is 0 for an exactly standard normal ECF and grows
    with `N` otherwise.

    Args:
        embeddings (`np.ndarray` of shape `(N, D)`): the embeddings, not standardised.
        num_slices (`int`, *optional*, defaults to 1024): random directions.
        num_knots (`int`, *optional*, defaults to 17): trapezoid knots.
        t_max (`float`, *optional*, defaults to 3.0): integration range.
        seed (`int`, *optional*, defaults to 0): seed of the directions.
    """
    return _PROTOCOL.epps_pulley(embeddings, num_slices=num_slices, num_knots=num_knots, t_max=t_max, seed=seed)


def _encode_labels(train_labels: np.ndarray, eval_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Maps labels of any type to `0..C-1` over the union of both splits."""
    classes, codes = np.unique(
        np.concatenate([np.asarray(train_labels), np.asarray(eval_labels)]), return_inverse=True
    )
    codes = codes.reshape(-1)
    return codes[: len(train_labels)], codes[len(train_labels) :], len(classes)


def compute_embedding_metrics(
    train_embeddings: np.ndarray,
    train_labels: np.ndarray,
    eval_embeddings: np.ndarray,
    eval_labels: np.ndarray,
    knn_k: int = 20,
    knn_temperature: float | None = 0.07,
    linear_probe: str = "logistic_regression",
    linear_probe_epochs: int = 100,
    sigreg_num_slices: int = 1024,
    sigreg_num_knots: int = 17,
    sigreg_t_max: float = 3.0,
    seed: int = 0,
) -> dict[str, Any]:
    """
    k-NN and linear-probe accuracies, effective rank and SIGReg statistic from precomputed embeddings.

    Args:
        train_embeddings, train_labels, eval_embeddings, eval_labels: the embeddings `(N, D)` and labels `(N,)` of
            both splits; labels of any type (mapped to `0..C-1`).
        knn_k, knn_temperature: see `knn_predict`.
        linear_probe, linear_probe_epochs: see `linear_probe_predict`.
        sigreg_num_slices, sigreg_num_knots, sigreg_t_max: see `sigreg_statistic`.
        seed (`int`, *optional*, defaults to 0): seed of the probe and of the SIGReg directions.

    Returns:
        `dict` with `knn_accuracy`, `linear_probe_accuracy` (in [0, 1]), `effective_rank` (in [1, D]),
        `sigreg_statistic`, sizes, the settings and one-line descriptions of the protocols (`knn_protocol`,
        `linear_probe_protocol`) for the model card.
    """
    train_codes, eval_codes, num_classes = _encode_labels(train_labels, eval_labels)
    metrics = load_frozen_embedding_eval().compute(
        embeddings=np.concatenate([train_embeddings, eval_embeddings]),
        labels=np.concatenate([train_codes, eval_codes]),
        splits=["train"] * len(train_codes) + ["eval"] * len(eval_codes),
        knn_k=knn_k,
        knn_temperature=knn_temperature,
        linear_probe=linear_probe,
        linear_probe_epochs=linear_probe_epochs,
        num_slices=sigreg_num_slices,
        num_knots=sigreg_num_knots,
        t_max=sigreg_t_max,
        seed=seed,
    )
    if not metrics.pop("linear_probe_converged"):
        logger.warning("The logistic regression did not fully converge.")
    if knn_temperature:
        knn_protocol = (
            f"**k-NN**: the {knn_k} train embeddings most similar (cosine) to each eval embedding vote, weighted by "
            f"`exp(similarity / {knn_temperature:g})`."
        )
    else:
        knn_protocol = f"**k-NN**: majority vote of the {knn_k} train embeddings most similar (cosine)."
    if linear_probe == "logistic_regression":
        probe_protocol = (
            "**Linear probe**: multinomial logistic regression (scikit-learn, L-BFGS, L2 with C = 1) on embeddings "
            "standardised with the train split's mean and standard deviation."
        )
    else:
        probe_protocol = (
            f"**Linear probe**: LayerNorm + Linear trained {linear_probe_epochs} epochs with AdamW (lr 1e-2, weight "
            "decay 1e-4, cosine schedule, batch 256) on the frozen embeddings."
        )
    return {
        "knn_accuracy": metrics["knn_accuracy"],
        "linear_probe_accuracy": metrics["linear_probe_accuracy"],
        "effective_rank": metrics["effective_rank"],
        "sigreg_statistic": metrics["epps_pulley"],
        "embedding_size": metrics["embedding_size"],
        "num_classes": metrics["num_classes"],
        "num_train_samples": metrics["num_train_samples"],
        "num_eval_samples": metrics["num_eval_samples"],
        "knn_k": int(knn_k),
        "knn_temperature": float(knn_temperature or 0.0),
        "linear_probe": linear_probe,
        "sigreg_num_slices": int(sigreg_num_slices),
        "sigreg_num_knots": int(sigreg_num_knots),
        "sigreg_t_max": float(sigreg_t_max),
        "seed": int(seed),
        "knn_protocol": knn_protocol,
        "linear_probe_protocol": probe_protocol,
    }


def evaluate_embeddings(
    model: nn.Module,
    train_dataset: Iterable[dict[str, Any]],
    eval_dataset: Iterable[dict[str, Any]],
    image_processor: Any = None,
    image_column_name: str = "image",
    label_column_name: str = "label",
    knn_k: int = 20,
    knn_temperature: float | None = 0.07,
    linear_probe: str = "logistic_regression",
    linear_probe_epochs: int = 100,
    sigreg_num_slices: int = 1024,
    sigreg_num_knots: int = 17,
    sigreg_t_max: float = 3.0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    spectrum_plot_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """
    Frozen-backbone evaluation of `model` on a labelled image dataset: embeds both splits (`extract_embeddings`)
    and returns `compute_embedding_metrics` of the embeddings. Works with a trained or a randomly initialised model;
    the model's training mode is restored afterwards.

    Args:
        model (`nn.Module`): a `LeJepaModel`, a LeJEPA model with a head, or any `transformers` vision model.
        train_dataset, eval_dataset (`datasets.Dataset` or `datasets.IterableDataset`): the labelled splits.
        image_processor (*optional*): defaults to `default_image_processor` at the model's resolution.
        spectrum_plot_path (`str` or `os.PathLike`, *optional*): also plot the eigenvalue spectrum of the eval
            embeddings there (`model_cards.plot_embedding_spectrum`).
        Other arguments: see `extract_embeddings` and `compute_embedding_metrics`.

    Returns:
        The metrics `dict` (`knn_accuracy`, `linear_probe_accuracy`, `effective_rank`, `sigreg_statistic`, ...).
    """
    common = {
        "image_processor": image_processor,
        "image_column_name": image_column_name,
        "label_column_name": label_column_name,
        "batch_size": batch_size,
        "device": device,
    }
    train_embeddings, train_labels = extract_embeddings(
        model, train_dataset, max_samples=max_train_samples, desc="Embedding train split", **common
    )
    eval_embeddings, eval_labels = extract_embeddings(
        model, eval_dataset, max_samples=max_eval_samples, desc="Embedding eval split", **common
    )
    if spectrum_plot_path is not None:
        plot_embedding_spectrum(eval_embeddings, spectrum_plot_path)
    return compute_embedding_metrics(
        train_embeddings,
        train_labels,
        eval_embeddings,
        eval_labels,
        knn_k=knn_k,
        knn_temperature=knn_temperature,
        linear_probe=linear_probe,
        linear_probe_epochs=linear_probe_epochs,
        sigreg_num_slices=sigreg_num_slices,
        sigreg_num_knots=sigreg_num_knots,
        sigreg_t_max=sigreg_t_max,
        seed=seed,
    )


def knn_metrics(
    model: nn.Module,
    train_dataset: Iterable[dict[str, Any]],
    eval_dataset: Iterable[dict[str, Any]],
    image_processor: Any = None,
    image_column_name: str = "image",
    label_column_name: str = "label",
    knn_k: int = 20,
    knn_temperature: float | None = 0.07,
    batch_size: int = 64,
) -> dict[str, float]:
    """
    The k-NN accuracy of `model`'s frozen embeddings, exactly as `run_evaluation.py` computes it
    (`extract_embeddings` of both splits, then `knn_predict`), as `{"knn_accuracy": ...}`: the metric that
    `LeJepaTrainer(eval_embedding_metrics=functools.partial(knn_metrics, train_dataset=..., eval_dataset=...))` logs
    as `eval_knn_accuracy` at every evaluation. Arguments as in `evaluate_embeddings`; the model runs on its device.
    """
    common = {
        "image_processor": image_processor,
        "image_column_name": image_column_name,
        "label_column_name": label_column_name,
        "batch_size": batch_size,
    }
    train_embeddings, train_labels = extract_embeddings(model, train_dataset, desc="k-NN: train split", **common)
    eval_embeddings, eval_labels = extract_embeddings(model, eval_dataset, desc="k-NN: eval split", **common)
    train_codes, eval_codes, num_classes = _encode_labels(train_labels, eval_labels)
    predictions = knn_predict(train_embeddings, train_codes, eval_embeddings, knn_k, knn_temperature, num_classes)
    return {"knn_accuracy": float(np.mean(predictions == eval_codes))}


def random_init_like(model: nn.Module, seed: int = 0) -> LeJepaModel:
    """
    A randomly initialised backbone of the same shape as `model`, the baseline of a frozen evaluation: a new
    `LeJepaModel` of the same configuration (or, for a plain `transformers` backbone, of a LeJEPA configuration
    wrapping it, so that the embedding rule is the same), initialised under `torch.manual_seed(seed)`.
    """
    module = _embedding_module(model)
    config = module.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.model_type == LeJepaConfig.model_type:
            baseline = type(module)(config)
        else:
            lejepa_config = LeJepaConfig(
                backbone_config=config, global_image_size=image_size_of(config), num_local_views=0
            )
            baseline = LeJepaModel(lejepa_config)
    parameter = next(module.parameters())
    return baseline.to(device=parameter.device, dtype=parameter.dtype).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Script
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class EvaluationArguments:
    """Arguments of `run_evaluation.py`."""

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
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the k-NN classifier."})
    knn_temperature: float = field(
        default=0.07, metadata={"help": "k-NN votes weighted by exp(similarity / T); 0 for a plain majority vote."}
    )
    linear_probe: str = field(
        default="logistic_regression",
        metadata={"help": "Linear probe: logistic_regression or layernorm_linear.", "choices": LINEAR_PROBES},
    )
    linear_probe_epochs: int = field(default=100, metadata={"help": "Epochs of the layernorm_linear probe."})
    sigreg_num_slices: int = field(default=1024, metadata={"help": "Random directions of the SIGReg statistic."})
    sigreg_num_knots: int = field(default=17, metadata={"help": "Knots of the Epps-Pulley integral."})
    sigreg_t_max: float = field(default=3.0, metadata={"help": "Integration range of the Epps-Pulley integral."})
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    device: str | None = field(default=None, metadata={"help": "Defaults to cuda when available, else cpu."})
    seed: int = field(default=0, metadata={"help": "Seed of the probe, the SIGReg directions and random init."})
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


def load_model(args: EvaluationArguments) -> tuple[nn.Module, Any]:
    """The model to evaluate and its image processor."""
    if args.model_preset is not None:
        torch.manual_seed(args.seed)
        model = LeJepaModel(LeJepaConfig.from_preset(args.model_preset))
        return model, default_image_processor(image_size_of(model.config))
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the head weights a backbone drops on purpose
    try:
        model, info = AutoModel.from_pretrained(
            args.model_name_or_path,
            trust_remote_code=args.trust_remote_code,
            cache_dir=args.cache_dir,
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        logger.warning(
            "%s lacks weights %s: they are randomly initialised.",
            args.model_name_or_path,
            sorted(info["missing_keys"]),
        )
    return model, load_image_processor(args.model_name_or_path, model.config)


def load_splits(args: EvaluationArguments, image_size: int) -> tuple[Any, Any, str]:
    """
    The train and eval splits, and a display name of the dataset. With `max_train_samples` / `max_eval_samples`, a
    split is shuffled with `seed` first, so that the subset is not the first rows of a dataset sorted by label. The
    built-in splits are already shuffled, and fixed: the same as those of `run_pretraining.py` (which pretrains on the
    train split only).
    """
    if args.dataset_name is None:
        from trainer.data import BUILTIN_DATASETS, load_digits_dataset, load_photos_dataset

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
            dataset = dataset.shuffle(seed=args.seed)
        return dataset

    train = load(args.train_split, args.max_train_samples)
    return train, load(args.eval_split, args.max_eval_samples), args.dataset_name


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser(
        EvaluationArguments, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        (args,) = parser.parse_json_file(argv[0])
    else:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    model, image_processor = load_model(args)
    model.to(device).eval()
    train_dataset, eval_dataset, dataset_display_name = load_splits(
        args, image_size_of(_embedding_module(model).config)
    )
    settings = {
        "knn_k": args.knn_k,
        "knn_temperature": args.knn_temperature,
        "linear_probe": args.linear_probe,
        "linear_probe_epochs": args.linear_probe_epochs,
        "sigreg_num_slices": args.sigreg_num_slices,
        "sigreg_num_knots": args.sigreg_num_knots,
        "sigreg_t_max": args.sigreg_t_max,
        "seed": args.seed,
    }
    extract = {
        "image_processor": image_processor,
        "image_column_name": args.image_column_name,
        "label_column_name": args.label_column_name,
        "batch_size": args.batch_size,
        "device": device,
    }

    def run(candidate: nn.Module, name: str) -> tuple[dict[str, Any], np.ndarray]:
        train_embeddings, train_labels = extract_embeddings(
            candidate, train_dataset, max_samples=args.max_train_samples, desc=f"{name}: train split", **extract
        )
        eval_embeddings, eval_labels = extract_embeddings(
            candidate, eval_dataset, max_samples=args.max_eval_samples, desc=f"{name}: eval split", **extract
        )
        metrics = compute_embedding_metrics(train_embeddings, train_labels, eval_embeddings, eval_labels, **settings)
        return metrics, eval_embeddings

    results, eval_embeddings = run(model, "model")
    results = {
        "model_name_or_path": args.model_name_or_path or f"random init ({args.model_preset})",
        "dataset_name": args.dataset_name or args.builtin_dataset,
        "dataset_display_name": dataset_display_name,
        "dataset_config_name": args.dataset_config_name,
        "train_split": args.train_split,
        "eval_split": args.eval_split,
        **results,
    }
    baselines = {"random_init_baseline": args.random_init_baseline, "raw_pixel_baseline": args.raw_pixel_baseline}
    for key, wanted in baselines.items():
        if not wanted:
            continue
        if key == "random_init_baseline":
            baseline, _ = run(random_init_like(model, args.seed), "random init")
        else:
            baseline, _ = run(raw_pixels_like(model), "raw pixels")
        kept = ("knn_accuracy", "linear_probe_accuracy", "effective_rank", "sigreg_statistic", "embedding_size")
        results[key] = {name: baseline[name] for name in kept}

    if args.output_dir is not None:
        output_dir = Path(args.output_dir)
    elif args.model_name_or_path is not None and os.path.isdir(args.model_name_or_path):
        output_dir = Path(args.model_name_or_path)
    else:
        output_dir = Path(".")
    output_file = Path(args.output_file) if args.output_file else output_dir / "eval_results.json"
    output_file.parent.mkdir(parents=True, exist_ok=True)
    output_file.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot_embedding_spectrum(eval_embeddings, output_file.parent / SPECTRUM_PLOT_NAME)
    logger.info("Wrote %s and %s", output_file, output_file.parent / SPECTRUM_PLOT_NAME)

    if args.update_model_card:
        checkpoint = Path(args.model_name_or_path)
        if (checkpoint / "README.md").is_file():
            update_model_card(checkpoint, results, embeddings=eval_embeddings)
        elif _embedding_module(model).config.model_type == LeJepaConfig.model_type:
            build_model_card(
                _embedding_module(model).config, checkpoint, eval_results=results, embeddings=eval_embeddings
            )
        else:
            logger.warning("%s has no model card to update; skipped.", checkpoint)

    summary = (
        f"k-NN accuracy {results['knn_accuracy']:.4f}, linear probe accuracy {results['linear_probe_accuracy']:.4f}, "
        f"effective rank {results['effective_rank']:.2f} / {results['embedding_size']}, "
        f"SIGReg statistic {results['sigreg_statistic']:.4g}"
    )
    logger.info("%s on %s (%s): %s", results["model_name_or_path"], dataset_display_name, args.eval_split, summary)
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
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
