"""
Frozen-backbone evaluation of a LeJEPA (or any `transformers` vision) backbone on a labelled image dataset.

Each image of a train and an eval split gives one embedding (the model's `pooler_output`, without augmentation), and:

- **k-NN**: each eval embedding is classified by its `k` (default 20) nearest train embeddings under cosine
  similarity. By default the votes are weighted by `exp(similarity / T)` with `T = 0.07`, the protocol of DINO;
  `knn_temperature=0` gives a plain majority vote (ties go to the smallest label).
- **Linear probe**: by default a multinomial logistic regression (scikit-learn, L-BFGS, L2 with `C = 1`) on
  embeddings standardised with the train split's mean and standard deviation; `linear_probe="layernorm_linear"`
  trains a LayerNorm + Linear head (as in `LeJepaForImageClassification`) with AdamW on the frozen embeddings instead.
- **Isotropy**: the effective rank of the eval embeddings' covariance (`exp` of the entropy of its normalised
  eigenvalues, between 1 and the embedding size) and the SIGReg statistic (Epps-Pulley against a standard normal,
  averaged over random directions drawn with a fixed seed, in float64) of the raw eval embeddings.

The metrics are computed by the `evaluate` module `trainer/metrics/frozen_embedding_eval` (loaded from its local
folder: no download), which works on its own for embeddings from anywhere and holds the protocol's settings and their
defaults (`FrozenEmbeddingArguments` reads them). `RawPixelEmbedding` and `random_init_like` are the baselines: the
raw pixels and a random backbone of the same shape, through the same protocol. `evaluate_embeddings` can read and
save the embeddings through a disk cache (`trainer.embedding_cache.EmbeddingCache`). The `lejepa-evaluate` command
(`trainer.cli.evaluate_main`, defined in `trainer.evaluation_command`) runs all of it on one or several checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, PreTrainedConfig, ViTImageProcessor
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import logging as hf_logging
from transformers.utils.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_lejepa import (
    LeJepaConfig,
    LeJepaModel,
    accepts_interpolate_pos_encoding,
    input_image_size,
    pool_embedding,
)

from .embedding_cache import EmbeddingCache
from .metrics import frozen_embedding_protocol, load_frozen_embedding_eval

logger = logging.getLogger(__name__)

# The k-NN, the linear probes, the effective rank and the Epps-Pulley statistic are those of the `evaluate` module
# `trainer/metrics/frozen_embedding_eval` (its one implementation), and so are the protocol's defaults.
_PROTOCOL = frozen_embedding_protocol()
_DEFAULTS = _PROTOCOL.DEFAULTS
LINEAR_PROBES = _PROTOCOL.LINEAR_PROBES
knn_predict = _PROTOCOL.knn_predict


# ---------------------------------------------------------------------------------------------------------------------
# The protocol's settings
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FrozenEmbeddingArguments:
    """
    The settings of the frozen-embedding protocol, with the `frozen_embedding_eval` module's defaults: the arguments
    of `compute_embedding_metrics`, `evaluate_embeddings` and `knn_metrics` (which also take each field as a keyword
    argument), options of the `lejepa-evaluate` command, and the protocol lines of the model card.
    """

    knn_k: int = field(default=_DEFAULTS["knn_k"], metadata={"help": "Neighbours of the k-NN classifier."})
    knn_temperature: float = field(
        default=_DEFAULTS["knn_temperature"],
        metadata={"help": "k-NN votes weighted by exp(similarity / T); 0 for a plain majority vote."},
    )
    linear_probe: str = field(
        default=_DEFAULTS["linear_probe"],
        metadata={"help": "Linear probe: logistic_regression or layernorm_linear.", "choices": LINEAR_PROBES},
    )
    linear_probe_epochs: int = field(
        default=_DEFAULTS["linear_probe_epochs"], metadata={"help": "Epochs of the layernorm_linear probe."}
    )
    sigreg_num_slices: int = field(
        default=_DEFAULTS["num_slices"], metadata={"help": "Random directions of the SIGReg statistic."}
    )
    sigreg_num_knots: int = field(
        default=_DEFAULTS["num_knots"], metadata={"help": "Knots of the Epps-Pulley integral."}
    )
    sigreg_t_max: float = field(
        default=_DEFAULTS["t_max"], metadata={"help": "Integration range of the Epps-Pulley integral."}
    )
    seed: int = field(
        default=_DEFAULTS["seed"], metadata={"help": "Seed of the probe, the SIGReg directions and random init."}
    )

    def metric_kwargs(self) -> dict[str, Any]:
        """The settings as keyword arguments of the `frozen_embedding_eval` module's `compute`."""
        return {
            "knn_k": self.knn_k,
            "knn_temperature": self.knn_temperature,
            "linear_probe": self.linear_probe,
            "linear_probe_epochs": self.linear_probe_epochs,
            "num_slices": self.sigreg_num_slices,
            "num_knots": self.sigreg_num_knots,
            "t_max": self.sigreg_t_max,
            "seed": self.seed,
        }

    def descriptions(self) -> dict[str, str]:
        """One-line Markdown descriptions of the k-NN and of the probe (`knn_protocol`, `linear_probe_protocol`), as
        the model card shows them, rendered from these settings and the module's fixed probe settings."""
        if self.knn_temperature:
            knn = (
                f"**k-NN**: the {self.knn_k} train embeddings most similar (cosine) to each eval embedding vote, "
                f"weighted by `exp(similarity / {self.knn_temperature:g})`."
            )
        else:
            knn = f"**k-NN**: majority vote of the {self.knn_k} train embeddings most similar (cosine)."
        if self.linear_probe == "logistic_regression":
            probe = (
                "**Linear probe**: multinomial logistic regression (scikit-learn, L-BFGS, L2 with "
                f"C = {_PROTOCOL.LOGISTIC_REGRESSION['C']:g}) on embeddings standardised with the train split's mean "
                "and standard deviation."
            )
        else:
            settings = _PROTOCOL.LAYERNORM_LINEAR
            probe = (
                f"**Linear probe**: LayerNorm + Linear trained {self.linear_probe_epochs} epochs with AdamW (lr "
                f"{_scientific(settings['learning_rate'])}, weight decay {_scientific(settings['weight_decay'])}, "
                f"cosine schedule, batch {settings['batch_size']}) on the frozen embeddings."
            )
        return {"knn_protocol": knn, "linear_probe_protocol": probe}


_PROTOCOL_FIELDS = frozenset(setting.name for setting in dataclasses.fields(FrozenEmbeddingArguments))


def _scientific(value: float) -> str:
    """`value` in short scientific notation: `1e-2` for 0.01."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _settings(protocol: FrozenEmbeddingArguments | None, overrides: dict[str, Any]) -> FrozenEmbeddingArguments:
    """`protocol` (default: the defaults) with the fields named in `overrides` replaced; unknown names raise."""
    return dataclasses.replace(protocol or FrozenEmbeddingArguments(), **overrides)


# ---------------------------------------------------------------------------------------------------------------------
# Preprocessing and embeddings
# ---------------------------------------------------------------------------------------------------------------------


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
    model's resolution (`modeling_lejepa.input_image_size`)."""
    if model_name_or_path is not None:
        try:
            return AutoImageProcessor.from_pretrained(model_name_or_path)
        except (OSError, ValueError):
            logger.info(
                "%s has no image processor config: resizing and normalising with ImageNet statistics.",
                model_name_or_path,
            )
    return default_image_processor(input_image_size(config))


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Only errors from `transformers` inside the block: the load report of a backbone loaded from a checkpoint with a
    head lists the head's weights, which are dropped on purpose."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


class RawPixelEmbedding(nn.Module):
    """
    The raw-pixel baseline of a frozen evaluation, as a model: the "embedding" of an image is its preprocessed
    `pixel_values` (resized to `image_size`, rescaled and normalised by the same image processor as the model's)
    flattened to `C * image_size**2` values. It has no parameters and goes through `extract_embeddings`,
    `compute_embedding_metrics` and `evaluate_embeddings` exactly as a model does, so its k-NN and linear-probe
    accuracies are those of the same protocol on the pixels the model sees.

    Args:
        image_size (`int`): the model's input resolution (`modeling_lejepa.input_image_size` of its config).
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
    return RawPixelEmbedding(input_image_size(embedding_module(model).config))


def embedding_module(model: nn.Module) -> nn.Module:
    """The module whose outputs carry the embedding: the `LeJepaModel` inside a LeJEPA head model, else `model`."""
    inner = getattr(model, "lejepa", None)
    return inner if isinstance(inner, nn.Module) else model


def embed(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """
    Image embeddings `(batch, dim)` of a batch: `modeling_lejepa.pool_embedding` of the outputs of `model` (of its
    `LeJepaModel` for a LeJEPA head model), with ViT position embeddings interpolated as `LeJepaModel` does. A
    `LeJepaModel`, its backbone exported to its native architecture and any `transformers` vision model give their
    LeJEPA embedding.
    """
    module = embedding_module(model)
    kwargs = {"interpolate_pos_encoding": True} if accepts_interpolate_pos_encoding(module) else {}
    return pool_embedding(module(pixel_values=pixel_values, **kwargs))


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
            `default_image_processor` at the model's resolution. One with `do_convert_rgb=False` (that of data that
            is not 8-bit RGB, `ImageFormat.image_processor`) gets `(C, H, W)` arrays of the images' own values
            (`read_image_array`).
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
    import datasets

    from .data import ImageDecodeError, decode_image, to_rgb_image
    from .data.arrays import read_image_array
    from .data.sources import array_dtype

    module = embedding_module(model)
    parameter = next(module.parameters(), None)  # None for `RawPixelEmbedding`
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = torch.device(device or (parameter.device if parameter is not None else "cpu"))
    if image_processor is None:
        image_processor = default_image_processor(input_image_size(module.config))
    # A processor that does not convert to RGB (`ImageFormat.image_processor`): images keep their values and channels
    keep_values = getattr(image_processor, "do_convert_rgb", None) is False
    features = getattr(dataset, "features", None)
    values_dtype = array_dtype(features, image_column_name)
    if keep_values and features is not None and isinstance(features.get(image_column_name), datasets.Image):
        dataset = dataset.cast_column(image_column_name, datasets.Image(decode=False))
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
                        if keep_values:
                            channels = len(image_processor.image_mean)
                            images.append(read_image_array(value, channels, dtype=values_dtype))
                        else:
                            images.append(to_rgb_image(decode_image(value)))
                        kept.append(target)
                    except ImageDecodeError as error:
                        skipped += 1
                        logger.warning("Skipping an image that does not decode: %s", error)
                seen += len(values)
                progress.update(len(values))
                if images:
                    layout = {"input_data_format": "channels_first"} if keep_values else {}
                    pixel_values = image_processor(images=images, return_tensors="pt", **layout)["pixel_values"]
                    embeddings.append(embed(module, pixel_values.to(device=device, dtype=dtype)).float().cpu())
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


def _embed_splits(
    model: nn.Module,
    train_dataset: Iterable[dict[str, Any]],
    eval_dataset: Iterable[dict[str, Any]],
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    desc: str = "Embedding",
    embedding_cache: EmbeddingCache | None = None,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`extract_embeddings` of both splits (`kwargs` go to it), through `embedding_cache` when given: train
    embeddings and labels, then eval ones."""
    key_names = ("image_processor", "image_column_name", "label_column_name")
    key_args = {name: kwargs[name] for name in key_names if name in kwargs}
    splits = (("train", train_dataset, max_train_samples), ("eval", eval_dataset, max_eval_samples))
    arrays = []
    for split, dataset, max_samples in splits:
        label = f"{desc}: {split}"
        compute = functools.partial(extract_embeddings, model, dataset, max_samples=max_samples, desc=label, **kwargs)
        if embedding_cache is None:
            arrays.extend(compute())
        else:
            cached = embedding_cache.load_or_compute(compute, dataset, label, max_samples=max_samples, **key_args)
            arrays.extend(cached)
    return tuple(arrays)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics on embeddings
# ---------------------------------------------------------------------------------------------------------------------


def linear_probe_predict(
    train_embeddings: np.ndarray, train_labels: np.ndarray, query_embeddings: np.ndarray, **kwargs
) -> np.ndarray:
    """
    Linear classification of frozen embeddings: the `frozen_embedding_eval` module's `linear_probe_predict`, which
    warns here when the logistic regression does not converge.

    Args:
        train_embeddings (`np.ndarray` of shape `(N, D)`): training embeddings.
        train_labels (`np.ndarray` of shape `(N,)`): their integer labels.
        query_embeddings (`np.ndarray` of shape `(Q, D)`): embeddings to classify.
        method (`str`, *optional*, defaults to `"logistic_regression"`): `"logistic_regression"` (scikit-learn
            multinomial logistic regression, L-BFGS, `C = 1`, one BLAS thread, on embeddings standardised with the
            training mean and standard deviation) or `"layernorm_linear"` (LayerNorm + Linear, AdamW at 1e-2 with
            weight decay 1e-4, cosine schedule, batch 256, for `epochs` epochs); the module's `LOGISTIC_REGRESSION`
            and `LAYERNORM_LINEAR` hold these settings.
        epochs (`int`, *optional*, defaults to 100): epochs of the `"layernorm_linear"` probe.
        seed (`int`, *optional*, defaults to 0): seed of the probe's initialisation and batch order.

    Returns:
        `np.ndarray` of shape `(Q,)`: the predicted labels.
    """
    predictions, converged = _PROTOCOL.linear_probe_predict(train_embeddings, train_labels, query_embeddings, **kwargs)
    if not converged:
        logger.warning("The logistic regression did not fully converge.")
    return predictions


# The SIGReg statistic of raw embeddings `(N, D)`: the Epps-Pulley statistic (against a standard normal, times `N`) of
# their projections on `num_slices` random unit directions (numpy's `default_rng(seed)`), averaged over directions,
# in float64 (the module's `epps_pulley`, with its defaults). It is 0 for an exactly standard normal ECF and grows
# with `N` otherwise.
sigreg_statistic = _PROTOCOL.epps_pulley


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
    protocol: FrozenEmbeddingArguments | None = None,
    **kwargs,
) -> dict[str, Any]:
    """
    k-NN and linear-probe accuracies, effective rank and SIGReg statistic from precomputed embeddings.

    Args:
        train_embeddings, train_labels, eval_embeddings, eval_labels: the embeddings `(N, D)` and labels `(N,)` of
            both splits; labels of any type (mapped to `0..C-1`).
        protocol (`FrozenEmbeddingArguments`, *optional*): the protocol's settings; defaults to the defaults.
        kwargs: fields of `FrozenEmbeddingArguments` (`knn_k`, `knn_temperature`, `linear_probe`,
            `linear_probe_epochs`, `sigreg_num_slices`, `sigreg_num_knots`, `sigreg_t_max`, `seed`) that replace
            those of `protocol`.

    Returns:
        `dict` with `knn_accuracy`, `linear_probe_accuracy` (in [0, 1]), `effective_rank` (in [1, D]),
        `sigreg_statistic`, sizes, the settings and one-line descriptions of the protocols (`knn_protocol`,
        `linear_probe_protocol`) for the model card.
    """
    protocol = _settings(protocol, kwargs)
    train_codes, eval_codes, _ = _encode_labels(train_labels, eval_labels)
    metrics = load_frozen_embedding_eval().compute(
        embeddings=np.concatenate([train_embeddings, eval_embeddings]),
        labels=np.concatenate([train_codes, eval_codes]),
        splits=["train"] * len(train_codes) + ["eval"] * len(eval_codes),
        **protocol.metric_kwargs(),
    )
    if not metrics.pop("linear_probe_converged"):
        logger.warning("The logistic regression did not fully converge.")
    return {
        "knn_accuracy": metrics["knn_accuracy"],
        "linear_probe_accuracy": metrics["linear_probe_accuracy"],
        "effective_rank": metrics["effective_rank"],
        "sigreg_statistic": metrics["epps_pulley"],
        "embedding_size": metrics["embedding_size"],
        "num_classes": metrics["num_classes"],
        "num_train_samples": metrics["num_train_samples"],
        "num_eval_samples": metrics["num_eval_samples"],
        "knn_k": int(protocol.knn_k),
        "knn_temperature": float(protocol.knn_temperature or 0.0),
        "linear_probe": protocol.linear_probe,
        "sigreg_num_slices": int(protocol.sigreg_num_slices),
        "sigreg_num_knots": int(protocol.sigreg_num_knots),
        "sigreg_t_max": float(protocol.sigreg_t_max),
        "seed": int(protocol.seed),
        **protocol.descriptions(),
    }


def evaluate_embeddings(
    model: nn.Module,
    train_dataset: Iterable[dict[str, Any]],
    eval_dataset: Iterable[dict[str, Any]],
    image_processor: Any = None,
    image_column_name: str = "image",
    label_column_name: str = "label",
    batch_size: int = 64,
    device: str | torch.device | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    spectrum_plot_path: str | os.PathLike | None = None,
    output_embeddings: bool = False,
    desc: str = "Embedding",
    protocol: FrozenEmbeddingArguments | None = None,
    embedding_cache: EmbeddingCache | None = None,
    **kwargs,
) -> dict[str, Any] | tuple[dict[str, Any], np.ndarray]:
    """
    Frozen-backbone evaluation of `model` on a labelled image dataset: embeds both splits (`extract_embeddings`)
    and returns `compute_embedding_metrics` of the embeddings. Works with a trained or a randomly initialised model;
    the model's training mode is restored afterwards.

    Args:
        model (`nn.Module`): a `LeJepaModel`, a LeJEPA model with a head, or any `transformers` vision model.
        train_dataset, eval_dataset (`datasets.Dataset` or `datasets.IterableDataset`): the labelled splits.
        image_processor (*optional*): defaults to `default_image_processor` at the model's resolution.
        max_train_samples, max_eval_samples (`int`, *optional*): use at most this many images of each split.
        spectrum_plot_path (`str` or `os.PathLike`, *optional*): also plot the eigenvalue spectrum of the eval
            embeddings there (`model_cards.plot_embedding_spectrum`).
        output_embeddings (`bool`, *optional*, defaults to `False`): also return the eval embeddings.
        desc (`str`, *optional*, defaults to `"Embedding"`): label of the progress bars.
        protocol (`FrozenEmbeddingArguments`, *optional*) and `kwargs`: the protocol's settings, as in
            `compute_embedding_metrics`.
        embedding_cache (`trainer.embedding_cache.EmbeddingCache`, *optional*): the model's embeddings on disk: a
            split found there is read instead of embedded, one that is not is embedded and saved.
        Other arguments: see `extract_embeddings`.

    Returns:
        The metrics `dict` (`knn_accuracy`, `linear_probe_accuracy`, `effective_rank`, `sigreg_statistic`, ...), and
        with `output_embeddings=True` the tuple `(metrics, eval_embeddings)`, the embeddings as an `(N, D)` array.
    """
    protocol = _settings(protocol, kwargs)
    train_embeddings, train_labels, eval_embeddings, eval_labels = _embed_splits(
        model,
        train_dataset,
        eval_dataset,
        max_train_samples,
        max_eval_samples,
        desc,
        embedding_cache,
        image_processor=image_processor,
        image_column_name=image_column_name,
        label_column_name=label_column_name,
        batch_size=batch_size,
        device=device,
    )
    if spectrum_plot_path is not None:
        from model_cards.plots import plot_embedding_spectrum  # needs matplotlib, an extra

        plot_embedding_spectrum(eval_embeddings, spectrum_plot_path)
    metrics = compute_embedding_metrics(
        train_embeddings, train_labels, eval_embeddings, eval_labels, protocol=protocol
    )
    return (metrics, eval_embeddings) if output_embeddings else metrics


def knn_metrics(
    model: nn.Module,
    train_dataset: Iterable[dict[str, Any]],
    eval_dataset: Iterable[dict[str, Any]],
    protocol: FrozenEmbeddingArguments | None = None,
    **kwargs,
) -> dict[str, float]:
    """
    The k-NN accuracy of `model`'s frozen embeddings, exactly as `evaluate_embeddings` computes it
    (`extract_embeddings` of both splits, then `knn_predict` with `protocol.knn_k` and `protocol.knn_temperature`),
    as `{"knn_accuracy": ...}`: the metric that
    `LeJepaTrainer(eval_embedding_metrics=functools.partial(knn_metrics, train_dataset=..., eval_dataset=...))` logs
    as `eval_knn_accuracy` at every evaluation. `kwargs` are fields of `FrozenEmbeddingArguments` replacing those of
    `protocol`, and arguments of `extract_embeddings` (`image_processor`, `image_column_name`, `label_column_name`,
    `batch_size`, `device`; the model runs on its device by default).
    """
    overrides = {name: kwargs.pop(name) for name in list(kwargs) if name in _PROTOCOL_FIELDS}
    protocol = _settings(protocol, overrides)
    train_embeddings, train_labels, eval_embeddings, eval_labels = _embed_splits(
        model, train_dataset, eval_dataset, desc="k-NN", **kwargs
    )
    train_codes, eval_codes, num_classes = _encode_labels(train_labels, eval_labels)
    predictions = knn_predict(
        train_embeddings, train_codes, eval_embeddings, protocol.knn_k, protocol.knn_temperature, num_classes
    )
    return {"knn_accuracy": float(np.mean(predictions == eval_codes))}


def random_init_like(model: nn.Module, seed: int = 0) -> LeJepaModel:
    """
    A randomly initialised backbone of the same shape as `model`, the baseline of a frozen evaluation: a new
    `LeJepaModel` of the same configuration (or, for a plain `transformers` backbone, of a LeJEPA configuration
    wrapping it, so that the embedding rule is the same), initialised under `torch.manual_seed(seed)`.
    """
    module = embedding_module(model)
    config = module.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.model_type == LeJepaConfig.model_type:
            baseline = type(module)(config)
        else:
            lejepa_config = LeJepaConfig(
                backbone_config=config, global_image_size=input_image_size(config), num_local_views=0
            )
            baseline = LeJepaModel(lejepa_config)
    parameter = next(module.parameters())
    return baseline.to(device=parameter.device, dtype=parameter.dtype).eval()


__all__ = [
    "LINEAR_PROBES",
    "FrozenEmbeddingArguments",
    "RawPixelEmbedding",
    "compute_embedding_metrics",
    "default_image_processor",
    "embed",
    "embedding_module",
    "evaluate_embeddings",
    "extract_embeddings",
    "knn_metrics",
    "knn_predict",
    "linear_probe_predict",
    "load_image_processor",
    "quiet_loading",
    "random_init_like",
    "raw_pixels_like",
    "sigreg_statistic",
]
