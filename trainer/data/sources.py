"""
Where the images come from: `load_pretraining_dataset` (a Hub id, a folder of images, parquet files or webdataset
shards, map-style or streamed), the detection of the image and label columns, `prepare_pretraining_dataset` and
`prepare_validation_dataset` (decoding and views attached on the fly), and the fixed validation set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from accelerate import PartialState
from datasets.data_files import sanitize_patterns
from datasets.load import infer_module_for_data_files
from datasets.packaged_modules.webdataset.webdataset import WebDataset
from transformers.utils import logging

from .arrays import ImageFormat, inspect_images
from .collator import (
    VALIDATION_VIEW_SEED,
    VIEW_SEED_COLUMN,
    BadSampleCounter,
    FixedViewBatchTransform,
    ImageTransform,
    MultiCropBatchTransform,
    _has_pixel_values,
)

logger = logging.get_logger(__name__)

# Column names taken as labels when they hold integers (ClassLabel columns are always taken). `cls` is the
# webdataset convention.
LABEL_COLUMN_NAMES = ("label", "labels", "cls")


def _feature_is_image(feature: Any) -> bool:
    return isinstance(feature, datasets.Image)


def _feature_is_array(feature: Any) -> bool:
    """An image stored as a numpy array (`Array2D` `(H, W)` or `Array3D` `(H, W, C)` / `(C, H, W)`)."""
    return isinstance(feature, (datasets.Array2D, datasets.Array3D))


def array_dtype(features: datasets.Features | None, image_column_name: str) -> str | None:
    """The dtype of an array image column (e.g. `"uint16"`), `None` for other columns or unknown features."""
    feature = features.get(image_column_name) if features is not None else None
    return feature.dtype if _feature_is_array(feature) else None


def _feature_is_integer(feature: Any) -> bool:
    return isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and ("int" in feature.dtype)
    )


def detect_image_column(features: datasets.Features | None, image_column_name: str | None = None) -> str:
    """
    Finds the image column: `image_column_name` when given (it must exist, unless the features are unknown), else
    the only `datasets.Image` column, else the only array column (`Array2D`, `Array3D`: images stored as arrays),
    else the only column named like an image file extension (`jpg`, `png`, `webp`, ... as in webdataset shards: the
    extensions that the `webdataset` builder of `datasets` decodes as images).

    Args:
        features (`datasets.Features`): the dataset's features.
        image_column_name (`str`, *optional*): the column chosen by the user.

    Raises:
        `ValueError`: naming the columns present and the `--image_column_name` flag, when the given column is missing
        or there is no single candidate.
    """
    if features is None:
        if image_column_name is not None:
            return image_column_name  # checked when the first example arrives
        raise ValueError(
            "The dataset's features are unknown, so its image column cannot be found; pass `--image_column_name`."
        )
    columns = list(features)
    if image_column_name is not None:
        if image_column_name not in features:
            raise ValueError(
                f"Image column {image_column_name!r} not found; the dataset has columns {columns}. Pass one of them "
                "as `--image_column_name`."
            )
        return image_column_name
    candidates = [name for name, feature in features.items() if _feature_is_image(feature)]
    if not candidates:
        candidates = [name for name, feature in features.items() if _feature_is_array(feature)]
    if not candidates:
        image_extensions = WebDataset.IMAGE_EXTENSIONS
        candidates = [name for name in columns if name.rsplit(".", 1)[-1].lower() in image_extensions]
    if len(candidates) == 1:
        return candidates[0]
    found = f"several image columns {candidates}" if candidates else "no image column"
    raise ValueError(
        f"Found {found} among the dataset's columns {columns}; choose one with `--image_column_name`."
    )


def detect_label_column(features: datasets.Features | None, image_column_name: str | None = None) -> str | None:
    """
    Finds the label column, or `None`: a `ClassLabel` column (preferring one named `label`/`labels` when there are
    several), else an integer column named `label`, `labels` or `cls` (webdataset).
    """
    if features is None:
        return None
    class_labels = [
        name for name, feature in features.items()
        if isinstance(feature, datasets.ClassLabel) and name != image_column_name
    ]
    named = [name for name in class_labels if name in LABEL_COLUMN_NAMES]
    if named:
        return named[0]
    if class_labels:
        return class_labels[0]
    for name in LABEL_COLUMN_NAMES:
        if name in features and _feature_is_integer(features[name]):
            return name
    return None


def _builder_for_data_files(data_files: str | Sequence[str] | dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """
    The `datasets` builder of `data_files` and its keyword arguments, inferred by `datasets` itself from the file
    extensions, as `load_dataset` does for a folder or a Hub repository: `parquet` for `.parquet` files,
    `webdataset` for `.tar` shards, `imagefolder` for any image format it knows, and so on (within a split, the
    most common extension decides; metadata files such as `metadata.csv` go with the images).

    Raises:
        `ValueError`: when `data_files` is empty, when `datasets` knows no format for the files, or when the splits
        of a dict have different formats.
    """
    if isinstance(data_files, Path):
        data_files = str(data_files)
    patterns = sanitize_patterns(data_files)
    if not any(patterns.values()):
        raise ValueError("`data_files` is empty.")
    try:
        return infer_module_for_data_files(patterns)
    except FileNotFoundError as error:  # `DataFilesNotFoundError`: no extension that `datasets` reads
        raise ValueError(
            f"Cannot tell the format of the data files {data_files!r}: use .parquet files, webdataset .tar shards or "
            "image files, or pass the builder name (e.g. 'parquet') as `--dataset_name` with `--data_files`."
        ) from error
    except ValueError as error:  # "Couldn't infer the same data file format for all splits"
        raise ValueError(f"`data_files` mixes formats ({error}); use one format per run.") from error


def load_pretraining_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    data_files: str | Sequence[str] | dict[str, Any] | None = None,
    split: str = "train",
    image_column_name: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    seed: int = 42,
    shuffle_buffer_size: int = 10_000,
) -> tuple[datasets.Dataset | datasets.IterableDataset, str, str | None]:
    """
    Loads the pretraining images, undecoded and untransformed (see `prepare_pretraining_dataset` for that).

    Sources, in order of precedence:
    - `dataset_name`: a Hub id or a local path, through `datasets.load_dataset(dataset_name, dataset_config_name,
      data_files=data_files)`;
    - `train_dir`: a folder of images (optionally in one sub-folder per class), through the `imagefolder` builder,
      or a folder of `.npy` arrays (one image each, no labels);
    - `data_files`: files or glob patterns, read with the builder that `datasets` infers from their extensions:
      `parquet` for `.parquet` files, `webdataset` for `.tar` shards, `imagefolder` for image files.

    With `streaming=True` the returned `datasets.IterableDataset` is shuffled with `seed` (the same on every
    process, so that shard assignment agrees) and a buffer of `shuffle_buffer_size` examples. It is *not* split
    between processes: Accelerate shards it itself when `dispatch_batches=False` (see `check_num_shards`).
    Map-style datasets are returned as they are; the Trainer's sampler shuffles them.

    Returns:
        `tuple`: the dataset, the name of its image column, and the name of its label column or `None`.

    Raises:
        `ValueError`: when no source (or both `dataset_name` and `train_dir`) is given, when the data file format is
        unknown, or when the image column is missing or ambiguous (the message names the columns).
    """
    common = {"split": split, "streaming": streaming, "cache_dir": cache_dir}
    if dataset_name is not None and train_dir is not None:
        raise ValueError("Pass either `--dataset_name` or `--train_dir`, not both.")
    if dataset_name is not None:
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, data_files=data_files, **common)
    elif train_dir is not None:
        if not os.path.isdir(train_dir):
            raise ValueError(f"`--train_dir` {train_dir!r} is not a directory.")
        arrays = sorted(str(path) for path in Path(train_dir).rglob("*.npy"))
        if arrays and data_files is None:  # a folder of numpy arrays, which `imagefolder` does not read
            dataset = _array_file_dataset(arrays, streaming)
        else:
            dataset = datasets.load_dataset("imagefolder", data_dir=train_dir, data_files=data_files, **common)
    elif data_files is not None:
        builder, builder_kwargs = _builder_for_data_files(data_files)
        dataset = datasets.load_dataset(builder, data_files=data_files, **builder_kwargs, **common)
    else:
        raise ValueError(
            "No training data given: pass `--dataset_name` (a Hub id or local path), `--train_dir` (a folder of "
            "images) or `--data_files` (parquet files or webdataset .tar shards)."
        )
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(f"Expected one split, got {list(dataset)}; pass `split`.")

    features = dataset.features
    image_column_name = detect_image_column(features, image_column_name)
    label_column_name = detect_label_column(features, image_column_name)
    if streaming:
        dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
    logger.info(
        f"Loaded {'a streamed' if streaming else 'a'} dataset with columns {list(features or [])}: images in "
        f"{image_column_name!r}, labels in {label_column_name!r}."
    )
    return dataset, image_column_name, label_column_name


def _array_file_dataset(paths: list[str], streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
    """A dataset of `.npy` files, one image each, as undecoded paths in an `image` column (read by
    `read_image_array`); streamed with one shard per file."""
    features = datasets.Features({"image": datasets.Image(decode=False)})
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": path} for path in paths]}, features)
    return dataset.to_iterable_dataset(num_shards=len(paths)) if streaming else dataset


def check_num_shards(
    dataset: datasets.Dataset | datasets.IterableDataset,
    world_size: int,
    dataloader_num_workers: int = 0,
    strict: bool = False,
) -> int | None:
    """
    Checks that a streamed dataset has enough shards for distributed training (`prepare_pretraining_dataset` calls
    it on every stream, with the run's number of processes).

    With `dispatch_batches=False`, Accelerate gives each process `num_shards / world_size` shards when
    `num_shards >= world_size`. Otherwise every process reads and decodes the *whole* stream and keeps one batch
    in `world_size` (correct, but `world_size` times the I/O and CPU). Within a process, DataLoader workers split
    that process's shards again, so workers beyond its shard count sit idle.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): map-style datasets always pass.
        world_size (`int`): number of training processes.
        dataloader_num_workers (`int`, defaults to 0): DataLoader workers per process.
        strict (`bool`, defaults to `False`): raise instead of warning when `num_shards < world_size`.

    Returns:
        `int` or `None`: the number of shards, `None` for a map-style dataset.

    Raises:
        `ValueError`: with `strict=True`, when the stream has fewer shards than processes.
    """
    if not isinstance(dataset, datasets.IterableDataset):
        return None
    num_shards = dataset.num_shards
    if num_shards < world_size:
        message = (
            f"The streamed dataset has {num_shards} shard(s) for {world_size} processes, so every process will read "
            f"and decode the whole stream and keep 1 batch in {world_size}. Split the data into at least "
            f"{world_size} files (parquet files or .tar shards), or for local data use "
            f"`Dataset.to_iterable_dataset(num_shards={world_size * max(1, dataloader_num_workers)})`."
        )
        if strict:
            raise ValueError(message)
        logger.warning(message)
    elif dataloader_num_workers > 1 and num_shards < world_size * dataloader_num_workers:
        logger.warning(
            f"The streamed dataset has {num_shards} shard(s) for {world_size} process(es) x "
            f"{dataloader_num_workers} DataLoader workers; workers without a shard stay idle. Use at least "
            f"{world_size * dataloader_num_workers} shards to keep them all busy."
        )
    return num_shards


def prepare_pretraining_dataset(
    dataset: datasets.Dataset | datasets.IterableDataset,
    transform: ImageTransform,
    image_column_name: str,
    label_column_name: str | None = None,
    counter: BadSampleCounter | None = None,
    max_image_pixels: int | None = None,
    map_batch_size: int = 16,
    dataloader_num_workers: int = 0,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Attaches robust decoding and the multi-crop transform to a dataset, without a preprocessing pass.

    The image column is cast to `datasets.Image(decode=False)` (a metadata change for `Image` columns; binary or
    path columns are cast the same way), so that `decode_image` sees the raw bytes. A map-style dataset gets the
    transform through `with_transform` (run on the fly by DataLoader workers; bad samples come out as `None` and the
    collator drops them). A streamed dataset gets it through `map(batched=True, batch_size=map_batch_size)` with
    the original columns removed (when its features are known), followed by a `filter` that leaves bad samples out
    of the stream; `check_num_shards` then warns when the stream has fewer shards than the run has processes
    (`accelerate.PartialState().num_processes`) or DataLoader workers.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): from `load_pretraining_dataset`, for instance.
        transform (`Callable`): typically a `MultiCropTransform`.
        image_column_name (`str`): the image column.
        label_column_name (`str`, *optional*): passed through as `labels`.
        counter (`BadSampleCounter`, *optional*): counts bad samples and enforces `max_bad_fraction`.
        max_image_pixels (`int`, *optional*): see `decode_image`.
        map_batch_size (`int`, defaults to 16): images transformed per `map` call when streaming; keep it small,
            as each image gives `Vg + Vl` float views.
        dataloader_num_workers (`int`, defaults to 0): DataLoader workers per process, for `check_num_shards`.

    Raises:
        `ValueError`: when the image column holds something that cannot be an image (e.g. integers).
    """
    dataset = _undecoded_image_column(dataset, image_column_name)
    streaming = isinstance(dataset, datasets.IterableDataset)
    batch_transform = MultiCropBatchTransform(
        transform,
        image_column_name,
        label_column_name=label_column_name,
        counter=counter,
        max_image_pixels=max_image_pixels,
        report_skipped=streaming,  # the stream's filter drops bad rows before the collator
        array_dtype=array_dtype(dataset.features, image_column_name),
    )
    if not streaming:
        return dataset.with_transform(batch_transform)
    check_num_shards(dataset, PartialState().num_processes, dataloader_num_workers)
    # Bad rows come out of `map` as `None` and are filtered out, which also works when the stream's columns are
    # unknown (then they cannot be removed and stay beside the views; the collator ignores them).
    features = dataset.features
    column_names = list(features) if features is not None else None
    dataset = dataset.map(batch_transform, batched=True, batch_size=map_batch_size, remove_columns=column_names)
    return dataset.filter(_has_pixel_values)


def _undecoded_image_column(
    dataset: datasets.Dataset | datasets.IterableDataset, image_column_name: str
) -> datasets.Dataset | datasets.IterableDataset:
    """`dataset` with its image column cast to `datasets.Image(decode=False)`, after checking that the column exists
    and holds images, bytes or paths (when the features are known); array columns are left as they are."""
    features = dataset.features
    if features is not None:
        if image_column_name not in features:
            raise ValueError(
                f"Image column {image_column_name!r} not found; the dataset has columns {list(features)}. Pass one "
                "of them as `--image_column_name`."
            )
        feature = features[image_column_name]
        if _feature_is_array(feature):
            return dataset
        castable = _feature_is_image(feature) or (
            isinstance(feature, datasets.Value)
            and feature.dtype in ("binary", "large_binary", "string", "large_string")
        )
        if not castable:
            raise ValueError(
                f"Column {image_column_name!r} holds {feature}, not images, bytes or paths; choose another "
                f"`--image_column_name` among {list(features)}."
            )
        if not (_feature_is_image(feature) and not feature.decode):
            dataset = dataset.cast_column(image_column_name, datasets.Image(decode=False))
    return dataset


def prepare_validation_dataset(
    dataset: datasets.Dataset,
    transform: ImageTransform,
    image_column_name: str,
    label_column_name: str | None = None,
    counter: BadSampleCounter | None = None,
    max_image_pixels: int | None = None,
    seed: int = VALIDATION_VIEW_SEED,
) -> datasets.Dataset:
    """
    `prepare_pretraining_dataset` for validation data: the same decoding and multi-crop transform, but the views of
    row `i` are drawn with the seed `seed + i` (`FixedViewBatchTransform`), identical at every evaluation and in
    every run. Labels, when `label_column_name` is given, pass through as `labels`.

    Args:
        dataset (`datasets.Dataset`): map-style validation images (see `take_validation_examples` for a stream).
        transform, image_column_name, label_column_name, counter, max_image_pixels: see `prepare_pretraining_dataset`.
        seed (`int`, *optional*, defaults to `VALIDATION_VIEW_SEED`): seed of the views of row 0.

    Raises:
        `ValueError`: for a streamed dataset, or when the image column is missing or holds no images.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise ValueError(
            f"Validation data must be map-style (`datasets.Dataset`), got {type(dataset).__name__}: take a fixed "
            "number of examples of a stream with `take_validation_examples`."
        )
    if VIEW_SEED_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(VIEW_SEED_COLUMN)
    dataset = dataset.add_column(VIEW_SEED_COLUMN, list(range(seed, seed + len(dataset))))
    dataset = _undecoded_image_column(dataset, image_column_name)
    batch_transform = MultiCropBatchTransform(
        transform, image_column_name, label_column_name=label_column_name, counter=counter,
        max_image_pixels=max_image_pixels, array_dtype=array_dtype(dataset.features, image_column_name),
    )
    return dataset.with_transform(FixedViewBatchTransform(batch_transform))


def take_validation_examples(
    dataset: datasets.Dataset | datasets.IterableDataset, num_examples: int | None, image_column_name: str
) -> datasets.Dataset:
    """
    A fixed validation set: the first `num_examples` rows of `dataset` in its stored order (for a stream: the first
    rows it yields, unshuffled), as an in-memory map-style `datasets.Dataset` with the images kept undecoded. The
    whole of a map-style `dataset` when `num_examples` is `None`.

    Raises:
        `ValueError`: when `dataset` is a stream and `num_examples` is not set (a stream has no end to stop at).
    """
    if isinstance(dataset, datasets.Dataset):
        return dataset if num_examples is None else dataset.select(range(min(num_examples, len(dataset))))
    if num_examples is None:
        raise ValueError("A streamed validation set needs a size: pass `--max_eval_samples`.")
    features = dataset.features
    if features is not None and _feature_is_image(features[image_column_name]):
        dataset = dataset.cast_column(image_column_name, datasets.Image(decode=False))
        features = dataset.features
    rows = list(dataset.take(num_examples))
    if not rows:
        raise ValueError("The validation stream gave no example.")
    return datasets.Dataset.from_list(rows, features=features)

def split_validation_dataset(
    train_dataset: datasets.Dataset | datasets.IterableDataset,
    image_column_name: str,
    validation_dataset: datasets.Dataset | datasets.IterableDataset | None = None,
    train_val_split: float | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
) -> tuple[datasets.Dataset | datasets.IterableDataset, datasets.Dataset | None]:
    """
    The validation set of a run, as `run_mae.py` makes it: a given `validation_dataset` (a named split or a folder),
    else a fraction `train_val_split` of the training data held out with `train_test_split(seed=seed)`, else none.
    It is then made fixed and map-style: at most `max_eval_samples` images, the first ones of a stream
    (`take_validation_examples`), or a sample of a map-style set drawn with a constant seed (`sample_examples`: the
    same subset in every run, also when `--seed` changes).

    Returns:
        `(train_dataset, validation_dataset)`: the training data without the held-out part, and the validation set
        (`None` when there is none).

    Raises:
        `ValueError`: for `train_val_split` outside (0, 1), together with `validation_dataset`, or on a stream (pass a
        validation split or folder instead).
    """
    if train_val_split is not None:
        if validation_dataset is not None:
            raise ValueError("Pass either a validation split/folder or `--train_val_split`, not both.")
        if not 0.0 < train_val_split < 1.0:
            raise ValueError(f"`--train_val_split` must be in (0, 1), got {train_val_split}.")
        if not isinstance(train_dataset, datasets.Dataset):
            raise ValueError(
                "`--train_val_split` needs map-style data: a stream cannot be split reproducibly. Pass "
                "`--validation_split` or `--validation_dir` with `--max_eval_samples` instead."
            )
        split = train_dataset.train_test_split(test_size=train_val_split, seed=seed)
        train_dataset, validation_dataset = split["train"], split["test"]
    if validation_dataset is None:
        return train_dataset, None
    if isinstance(validation_dataset, datasets.Dataset):
        return train_dataset, sample_examples(validation_dataset, max_eval_samples)
    return train_dataset, take_validation_examples(validation_dataset, max_eval_samples, image_column_name)


def inspect_dataset_images(
    dataset: datasets.Dataset | datasets.IterableDataset,
    image_column_name: str,
    num_samples: int = 256,
    **kwargs: Any,
) -> ImageFormat:
    """
    `inspect_images` (the pixel format, channels, dtype and per-channel statistics of a run's images) on a sample of
    `dataset`: at most `num_samples` undecoded images, drawn with a constant seed from a map-style dataset
    (`sample_examples`), the first ones of a stream (in its seeded shuffle order). Every process draws the same
    sample, so they agree without communicating, and a resumed run finds the same statistics.

    Args:
        kwargs: `num_channels`, `max_pixel_value`, `image_mean`, `image_std` of `inspect_images`.
    """
    if num_samples < 1:
        raise ValueError(f"`num_samples` must be positive, got {num_samples}.")
    dtype = array_dtype(dataset.features, image_column_name)
    dataset = _undecoded_image_column(dataset, image_column_name)
    if isinstance(dataset, datasets.Dataset):
        values = sample_examples(dataset, num_samples)[image_column_name]
    else:
        values = [row[image_column_name] for row in dataset.select_columns([image_column_name]).take(num_samples)]
    if not values:
        raise ValueError("The dataset has no image to inspect.")
    image_format = inspect_images(values, dtype=dtype, **kwargs)
    logger.info(f"Images: {image_format}")
    return image_format


def sample_examples(dataset: datasets.Dataset, num_examples: int | None) -> datasets.Dataset:
    """At most `num_examples` rows of a map-style dataset, drawn with the constant seed `VALIDATION_VIEW_SEED` (the
    same rows in every run; not the first rows, which may all be of one class); all of it when `num_examples` is
    `None` or not smaller."""
    if num_examples is None or num_examples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=VALIDATION_VIEW_SEED).select(range(num_examples)).flatten_indices()
