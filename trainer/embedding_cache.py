"""
A disk cache of frozen embeddings, so that re-running an evaluation (`lejepa-evaluate --embedding_cache_dir DIR`)
computes no forward pass.

`EmbeddingCache(directory, model_fingerprint)` holds the embeddings of one model: each split is saved as
`DIR/<key>.npz` (arrays `embeddings` and `labels`, read back without pickle) with a readable `DIR/<key>.json` of what
the key was made from. The key is a SHA-256 of everything that determines the embeddings, and nothing that does not
(the batch size, the device):

- the model: `model_fingerprint`, i.e. the class of the module that embeds, its configuration, its dtype and its
  source, the name, size and modification time of the configuration and weight files of its folder (a local folder,
  or the Hub snapshot a Hub id resolves to), so that a model saved again under the same name invalidates its entries;
- the image processor's configuration (`to_dict()`);
- the dataset: `datasets`' fingerprint of a map-style `Dataset` (which changes with any `shuffle`, `select` or
  `map`), else the name, configuration and split of an `IterableDataset`;
- the sample limit and the image and label columns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

# Files of a model folder that determine its embeddings (configuration and weights; not the card or results).
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth")
IGNORED_MODEL_FILES = frozenset({"eval_results.json", "lejepa_eval_results.json", "trainer_state.json"})
# Bumped when the meaning of a cached array changes (e.g. the embedding rule), so that old entries are not reused.
CACHE_FORMAT_VERSION = 1


def _digest(description: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def model_source_files(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> list[Any]:
    """
    `[name, size, mtime_ns]` of the configuration and weight files of a model: those of its folder when
    `name_or_path` is a local folder, else of the local Hub snapshot that `config.json` resolves to (no download
    when it is cached or `HF_HUB_OFFLINE=1` is set). Model cards, evaluation results and plots are left out.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        from transformers.utils import cached_file

        folder = Path(cached_file(str(name_or_path), "config.json", cache_dir=cache_dir)).parent
    files = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in MODEL_FILE_SUFFIXES and path.name not in IGNORED_MODEL_FILES:
            stat = path.stat()  # follows the Hub cache's symbolic links to the blobs
            files.append([path.name, stat.st_size, stat.st_mtime_ns])
    return files


def _config_dict(module: nn.Module) -> dict[str, Any]:
    config = getattr(module, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return {}
    return {key: value for key, value in config.to_dict().items() if not key.startswith("_")}


def model_fingerprint(module: nn.Module, **source: Any) -> dict[str, Any]:
    """
    What determines the embeddings of `module` besides the data: its class, configuration, parameter dtype, and
    `source`, a description of where its weights come from (e.g. `files=model_source_files(path)` for a loaded
    checkpoint, or `preset=..., seed=...` for a random initialisation).
    """
    parameter = next(module.parameters(), None)
    return {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "config": _config_dict(module),
        "dtype": str(parameter.dtype if parameter is not None else torch.float32),
        "torch": torch.__version__ if "seed" in source else None,  # random weights depend on torch's generator
        **source,
    }


def dataset_fingerprint(dataset: Any) -> dict[str, Any] | None:
    """The identity of a split: `datasets`' fingerprint of a map-style `Dataset`, else the name, configuration and
    split of an `IterableDataset`; `None` when there is neither (the split is then not cached)."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is not None:
        return {"fingerprint": fingerprint}
    info = getattr(dataset, "info", None)
    name = getattr(info, "dataset_name", None)
    if name is None:
        return None
    return {"dataset_name": name, "config_name": info.config_name, "split": str(getattr(dataset, "split", None))}


def _processor_dict(image_processor: Any) -> dict[str, Any] | None:
    if image_processor is None:
        return None
    if hasattr(image_processor, "to_dict"):
        return image_processor.to_dict()
    return {"repr": repr(image_processor)}


class EmbeddingCache:
    """
    The embeddings of one model on disk, one `.npz` file per split (see the module's docstring for the key).

    Args:
        directory (`str` or `os.PathLike`): the cache folder (created when needed); it may be shared by models.
        model_fingerprint (`dict`): `model_fingerprint` of the model.
    """

    def __init__(self, directory: str | os.PathLike, model_fingerprint: Mapping[str, Any]):
        self.directory = Path(directory)
        self.model_fingerprint = dict(model_fingerprint)

    def key(
        self,
        dataset: Any,
        image_processor: Any = None,
        max_samples: int | None = None,
        image_column_name: str = "image",
        label_column_name: str = "label",
    ) -> tuple[str | None, dict[str, Any]]:
        """The file key of a split and the description it hashes; the key is `None` for a dataset without
        identity (`dataset_fingerprint`)."""
        identity = dataset_fingerprint(dataset)
        description = {
            "format": CACHE_FORMAT_VERSION,
            "model": self.model_fingerprint,
            "image_processor": _processor_dict(image_processor),
            "dataset": identity,
            "max_samples": max_samples,
            "columns": [image_column_name, label_column_name],
        }
        return (None if identity is None else _digest(description)), description

    def load_or_compute(
        self, compute: Callable[[], tuple[np.ndarray, np.ndarray]], dataset: Any, desc: str = "embeddings", **key_args
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        The `(embeddings, labels)` of a split: read from the cache when present, else `compute()`d and saved.
        `key_args` are those of `key` (`image_processor`, `max_samples`, `image_column_name`, `label_column_name`).
        """
        key, description = self.key(dataset, **key_args)
        if key is None:
            logger.warning("%s: the dataset has no fingerprint nor name; its embeddings are not cached.", desc)
            return compute()
        path = self.directory / f"{key}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as arrays:
                embeddings, labels = arrays["embeddings"], arrays["labels"]
            logger.info("%s: loaded %d cached embeddings from %s (no forward pass).", desc, len(embeddings), path)
            return embeddings, labels
        embeddings, labels = compute()
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".npz.partial")
        with open(partial, "wb") as file:
            np.savez(file, embeddings=embeddings, labels=labels)
        os.replace(partial, path)  # a reader never sees a half-written file
        path.with_suffix(".json").write_text(json.dumps(description, indent=2, default=str) + "\n", encoding="utf-8")
        logger.info("%s: cached %d embeddings in %s.", desc, len(embeddings), path)
        return embeddings, labels


__all__ = ["EmbeddingCache", "dataset_fingerprint", "model_fingerprint", "model_source_files"]
