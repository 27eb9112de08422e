"""
From dataset rows to model inputs: `MultiCropBatchTransform` decodes a batch of rows and makes their views (with
`datasets.Dataset.with_transform` or `datasets.IterableDataset.map`), `FixedViewBatchTransform` seeds the views of
each validation row, `BadSampleCounter` counts the images that fail to decode, and `MultiCropCollator` stacks the
views of a batch.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import PIL.Image
import torch
from torch.utils.data import get_worker_info
from transformers.utils import logging

from .arrays import read_image_array
from .decoding import ImageDecodeError, decode_image, read_jpeg_for_device, to_rgb_image

logger = logging.get_logger(__name__)

# What makes the model inputs of one decoded image: a `MultiCropTransform` (views) or a `DecodeResizeTransform` (one
# resized image, for views made on the device).
ImageTransform = Callable[[PIL.Image.Image], dict[str, torch.Tensor]]
# The key of a row's (and a batch's) JPEG bytes left to the training device (`DecodeResizeTransform.decode_on_device`).
JPEG_BYTES_KEY = "jpeg_bytes"


@dataclass
class BadSampleCounter:
    """
    Counts decoded and skipped images and stops the run when too many fail (a wrong column, a broken download).

    Counts are per process: each DataLoader worker and each training process keeps its own copy, and each copy
    checks its own fraction.

    Args:
        max_bad_fraction (`float`, defaults to 0.1):
            Largest tolerated fraction of skipped images; 1.0 never stops.
        min_samples (`int`, defaults to 100):
            The fraction is checked only once this many images have been seen.
        max_logged (`int`, defaults to 10):
            Bad samples logged as warnings; later ones are logged at debug level.

    Attributes:
        seen (`int`): images attempted.
        skipped (`int`): images skipped.
        reasons (`collections.Counter`): skipped images per `ImageDecodeError.kind`.
    """

    max_bad_fraction: float = 0.1
    min_samples: int = 100
    max_logged: int = 10
    seen: int = 0
    skipped: int = 0
    reasons: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self):
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"`max_bad_fraction` must be in [0, 1], got {self.max_bad_fraction}.")

    @property
    def bad_fraction(self) -> float:
        """Fraction of the images seen so far that were skipped."""
        return self.skipped / self.seen if self.seen else 0.0

    def record_good(self, count: int = 1) -> None:
        """Counts `count` images that decoded."""
        self.seen += count

    def record_bad(self, error: ImageDecodeError | str) -> None:
        """Counts one skipped image and logs why."""
        self.seen += 1
        self.skipped += 1
        kind = error.kind if isinstance(error, ImageDecodeError) else str(error)
        self.reasons[kind] += 1
        log = logger.warning if self.skipped <= self.max_logged else logger.debug
        suffix = " Further bad samples are logged at debug level." if self.skipped == self.max_logged else ""
        log(f"Skipping an image ({self.skipped} of {self.seen} so far): {error}{suffix}")

    def check(self) -> None:
        """
        Raises `RuntimeError` when, after at least `min_samples` images, more than `max_bad_fraction` of them were
        skipped.
        """
        if self.seen >= self.min_samples and self.bad_fraction > self.max_bad_fraction:
            reasons = ", ".join(f"{kind}: {count}" for kind, count in self.reasons.most_common())
            raise RuntimeError(
                f"{self.skipped} of {self.seen} images ({self.bad_fraction:.1%}) could not be decoded, more than "
                f"max_bad_fraction={self.max_bad_fraction} allows ({reasons}). Check the dataset and the image "
                "column (`--image_column_name`), or raise `--max_bad_fraction` (1.0 never stops) if that many "
                "bad images is expected."
            )

    def state_dict(self) -> dict[str, Any]:
        """The counts, for logging or checkpoints."""
        return {"seen": self.seen, "skipped": self.skipped, "reasons": dict(self.reasons)}


class MultiCropBatchTransform:
    """
    The per-batch function for `datasets.Dataset.with_transform` and `datasets.IterableDataset.map(batched=True)`:
    decodes the image column itself (the column must be cast to `datasets.Image(decode=False)`, which
    `prepare_pretraining_dataset` does), applies a `MultiCropTransform`, and passes labels through. With a
    `DecodeResizeTransform` (views made on the device), JPEGs are decoded at reduced size (its `min_pixels`) and each
    row carries one `uint8` image under `"images"` instead of views; with its `decode_on_device`, JPEGs that the
    device decodes carry their bytes under `"jpeg_bytes"` instead (`read_jpeg_for_device`).

    A sample whose image fails to decode (see `decode_image`) is counted by `counter`; with `drop_bad_samples` it is
    left out of the output (streams: the batch just gets shorter), otherwise its `pixel_values` is `None`, so that
    row counts stay aligned with the indices of a map-style dataset, and `MultiCropCollator` drops it.

    Bad rows that never reach the collator (dropped here, or filtered out of a stream) would go unreported in the
    trainer's `skipped_images`: with `report_skipped`, every good row carries in `"num_skipped"` the number of bad
    rows dropped since the previous good row (of this worker), which `MultiCropCollator` adds to its count.

    Args:
        transform (`Callable`): maps an RGB PIL image to a dict of tensors, typically a `MultiCropTransform`.
        image_column_name (`str`): column holding the images.
        label_column_name (`str`, *optional*): column with integer labels, returned as `"labels"` (`-100` when a
            sample has none).
        counter (`BadSampleCounter`, *optional*): where bad samples are counted; a new one by default.
        max_image_pixels (`int`, *optional*): see `decode_image`.
        drop_bad_samples (`bool`, defaults to `False`): leave bad samples out instead of returning `None`.
        report_skipped (`bool`, defaults to `False`): add the `"num_skipped"` column described above (set it when bad
            rows will not reach the collator).
        array_dtype (`str`, *optional*): the dtype of images stored as nested lists (a `datasets` `Array3D`
            column's); with a transform of `pixel_format="float"`, images are read with `read_image_array` (values and
            channels kept) instead of being turned into RGB.
    """

    def __init__(
        self,
        transform: ImageTransform,
        image_column_name: str,
        label_column_name: str | None = None,
        counter: BadSampleCounter | None = None,
        max_image_pixels: int | None = None,
        drop_bad_samples: bool = False,
        report_skipped: bool = False,
        array_dtype: str | None = None,
    ):
        self.transform = transform
        self.array_dtype = array_dtype
        self.image_column_name = image_column_name
        self.label_column_name = label_column_name
        self.counter = counter if counter is not None else BadSampleCounter()
        self.max_image_pixels = max_image_pixels
        self.drop_bad_samples = drop_bad_samples
        self.report_skipped = report_skipped
        self._unreported = 0  # bad rows dropped since the last good row, not yet reported
        self.background_color = getattr(getattr(transform, "config", None), "background_color", (255, 255, 255))
        # `DecodeResizeTransform`: reduced-size JPEG decoding, the key of its output, and JPEGs left to the device
        self.min_pixels = getattr(transform, "min_pixels", None)
        self.output_key = getattr(transform, "output_key", "pixel_values")
        self.max_device_pixels = getattr(transform, "max_device_pixels", None)
        self.decode_on_device = bool(getattr(transform, "decode_on_device", False))
        view_config = getattr(transform, "config", None)
        # `"float"` data: read with values and channels kept (`trainer.data.arrays`), never through 8-bit RGB
        is_float = getattr(view_config, "pixel_format", "rgb") == "float"
        self.num_channels = view_config.num_channels if is_float else None

    def _row(self, value: Any) -> dict[str, Any]:
        """The model inputs of one image value: its JPEG bytes (`"jpeg_bytes"`, for `decode_on_device`), else the
        transform's output for the decoded image."""
        if self.decode_on_device:
            encoded = read_jpeg_for_device(value, self.max_image_pixels, self.max_device_pixels)
            if encoded is not None:
                return {JPEG_BYTES_KEY: encoded}
        if self.num_channels is not None:
            return self.transform(read_image_array(value, self.num_channels, self.max_image_pixels, self.array_dtype))
        image = decode_image(value, self.max_image_pixels, min_pixels=self.min_pixels)
        return self.transform(to_rgb_image(image, self.background_color))

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        """
        Args:
            batch (`dict[str, list]`): a batch of rows, column by column, as `datasets` passes it.

        Returns:
            `dict[str, list]`: `"pixel_values"`, `"local_pixel_values"` (when the transform makes local views) and
            `"labels"` (when there is a label column), one entry per kept row.
        """
        if self.image_column_name not in batch:
            raise KeyError(
                f"The batch has no image column {self.image_column_name!r}; it has {sorted(batch)}. Set "
                "`--image_column_name`."
            )
        images = batch[self.image_column_name]
        labels = batch.get(self.label_column_name) if self.label_column_name is not None else None
        rows: list[dict[str, torch.Tensor] | None] = []
        row_labels = []
        row_skipped = []
        for index, value in enumerate(images):
            try:
                views = self._row(value)
            except ImageDecodeError as error:
                self.counter.record_bad(error)
                self._unreported += 1
                if self.drop_bad_samples:
                    continue
                views = None
            rows.append(views)
            row_skipped.append(0 if views is None else self._unreported)
            if views is not None:
                self._unreported = 0
            if labels is not None:
                row_labels.append(-100 if labels[index] is None else labels[index])
        self.counter.record_good(sum(row is not None for row in rows))
        self.counter.check()
        present = dict.fromkeys(key for row in rows if row is not None for key in row)
        keys = [self.output_key] + [key for key in present if key != self.output_key]
        output = {key: [None if row is None else row.get(key) for row in rows] for key in keys}
        if labels is not None:
            output["labels"] = row_labels
        if self.report_skipped:
            output["num_skipped"] = row_skipped
        return output


@dataclass
class MultiCropCollator:
    """
    Stacks examples from `MultiCropBatchTransform` (or any dicts with the same keys) into model inputs:
    `pixel_values` `(B, Vg, C, H, W)`, `local_pixel_values` `(B, Vl, C, h, w)` when the examples have local views,
    `num_skipped` (a 0-d tensor: the examples of this batch that failed to decode, plus the `"num_skipped"` that kept
    examples carry for bad rows filtered out earlier, e.g. in a stream; `LeJepaTrainer` logs it as
    `skipped_images`), and `labels` `(B,)` when they have labels (`"labels"` or `"label"`) and `return_labels` is
    set. Each view is
    copied once, by a single `torch.stack` per key.

    Examples from `DecodeResizeTransform` (`augment_on_device`) carry one image `"images"` `(C, h, w)` each
    (`uint8` RGB, or `float32` for data that is not 8-bit RGB) instead of views: they are copied once into a canvas
    `images` `(B, C, H_max, W_max)` (of their dtype, stored channels last, the images at the top left; each image's
    last row and column are repeated once into the padding, so that bilinear crops touching its border see its own
    edge, and the rest of the padding is zero) with their true sizes
    in `image_sizes` `(B, 2)` (height, width). With `decode_on_device`, examples may instead carry a JPEG's bytes
    (`"jpeg_bytes"`, a `uint8` numpy array, which device placement leaves on the host): the batch then holds the
    decoded images first (in `images`, when there are any) and the list `jpeg_bytes` after them, `labels` in the
    same order, and `LeJepaTrainer` decodes and appends the JPEGs on the device.

    Examples that are `None` or whose `pixel_values` (or `images`, or `jpeg_bytes`) is `None` (failed decodes) are
    dropped, so a batch may be smaller than the batch size; they are counted in `num_skipped` (per process:
    DataLoader workers keep their own copies).

    Args:
        return_labels (`bool`, defaults to `True`):
            Whether to return `labels`. `LeJepaForPreTraining.forward` takes no labels, so pretraining needs them
            left out (set `False`) or removed before the forward pass.
        shared_memory (`bool`, defaults to `True`):
            In DataLoader workers, stack the views straight into shared memory, saving the copy the worker would
            otherwise make to send the batch (`benchmarks/bench_data.py` measures it).

    Raises:
        `RuntimeError`: when every example of a batch failed.
    """

    return_labels: bool = True
    shared_memory: bool = True
    num_skipped: int = field(default=0, init=False)

    def _stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """`torch.stack`; inside a DataLoader worker (with `shared_memory`) straight into shared memory, as
        `default_collate` does, so that sending the batch to the main process copies nothing more."""
        if not self.shared_memory or get_worker_info() is None:
            return torch.stack(tensors)
        first = tensors[0]
        storage = first._typed_storage()._new_shared(len(tensors) * first.numel(), device=first.device)
        return torch.stack(tensors, out=first.new(storage).resize_(len(tensors), *first.shape))

    def _pad(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The images `(C, h, w)` (`uint8` RGB, or `float32` of any channel count) in one canvas
        `(B, C, H_max, W_max)` of their dtype (in shared memory inside workers) and their sizes `(B, 2)`.

        The canvas is stored channels last (`(B, H_max, W_max, C)` in memory, the layout of a decoded image), so that
        each image is copied in whole rows; `DeviceMultiCrop` makes it contiguous on the training device.
        """
        sizes = torch.tensor([image.shape[-2:] for image in images], dtype=torch.long)
        height, width = (int(value) for value in sizes.max(dim=0).values)
        shape = (len(images), height, width, images[0].shape[0])
        if self.shared_memory and get_worker_info() is not None:
            storage = images[0]._typed_storage()._new_shared(math.prod(shape), device=images[0].device)
            canvas = images[0].new(storage).resize_(*shape)
        else:
            canvas = images[0].new_empty(shape)
        canvas = canvas.permute(0, 3, 1, 2)  # (B, C, H_max, W_max), channels last
        for slot, image in zip(canvas, images):
            fill_canvas_slot(slot, image)
        return {"images": canvas, "image_sizes": sizes}

    def __call__(self, examples: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
        kept = [example for example in examples if example is not None and _has_pixel_values(example)]
        encoded = [example for example in kept if example.get(JPEG_BYTES_KEY) is not None]
        if encoded:  # the decoded images first, then the JPEGs left to the device, labels in the same order
            kept = [example for example in kept if example.get(JPEG_BYTES_KEY) is None] + encoded
        num_skipped = len(examples) - len(kept) + sum(int(example.get("num_skipped") or 0) for example in kept)
        self.num_skipped += num_skipped
        if not kept:
            raise RuntimeError(
                f"Every example of this batch ({len(examples)}) failed to decode, so there is nothing to train on. "
                "Check the image column (`--image_column_name`) and the logged decode errors."
            )
        if encoded:
            decoded = kept[: len(kept) - len(encoded)]
            batch = self._pad([example["images"] for example in decoded]) if decoded else {}
            batch[JPEG_BYTES_KEY] = [example[JPEG_BYTES_KEY] for example in encoded]
        elif kept[0].get("images") is not None:
            batch = self._pad([example["images"] for example in kept])
        else:
            batch = {"pixel_values": self._stack([example["pixel_values"] for example in kept])}
        # travels with the batch out of the DataLoader worker, so that the trainer can log it
        batch["num_skipped"] = torch.tensor(num_skipped)
        if kept[0].get("local_pixel_values") is not None:
            batch["local_pixel_values"] = self._stack([example["local_pixel_values"] for example in kept])
        if self.return_labels:
            label_key = "labels" if "labels" in kept[0] else "label" if "label" in kept[0] else None
            if label_key is not None:
                batch["labels"] = torch.tensor(
                    [-100 if example.get(label_key) is None else int(example[label_key]) for example in kept],
                    dtype=torch.long,
                )
        return batch


def _has_pixel_values(example: dict[str, Any]) -> bool:
    return any(example.get(key) is not None for key in ("pixel_values", "images", JPEG_BYTES_KEY))


def fill_canvas_slot(slot: torch.Tensor, image: torch.Tensor) -> None:
    """Writes an image `(..., C, h, w)` at the top left of its slot `(..., C, H, W)` of a padded canvas,
    repeats its last column and then its last row (with the corner) once into the padding, so that bilinear crops
    touching its border see its own edge, and zeroes the rest of the padding (never sampled, but defined). A block
    of images of one padded size (a whole canvas) is written the same way."""
    height, width = slot.shape[-2:]
    h, w = image.shape[-2:]
    slot[..., :h, :w] = image
    if w < width:
        slot[..., :h, w] = image[..., :, w - 1]
    if h < height:
        slot[..., h, : min(w + 1, width)] = slot[..., h - 1, : min(w + 1, width)]
    slot[..., h + 1 :, :].zero_()
    slot[..., : h + 1, w + 1 :].zero_()


# Seed of the views of validation image 0; image `i` uses `VALIDATION_VIEW_SEED + i`. A constant (not the run's seed),
# so that every run and every evaluation sees the same views of the same validation image.
VALIDATION_VIEW_SEED = 0
VIEW_SEED_COLUMN = "view_seed"


class FixedViewBatchTransform:
    """
    Wraps a `MultiCropBatchTransform` so that the random views of each row are drawn from torch's generator seeded
    with the row's `view_seed` column (forked: the caller's random state is left untouched). The views of a
    validation image then depend only on its index, not on the evaluation, the run, the DataLoader worker or the
    number of processes. Used by `prepare_validation_dataset`.

    Args:
        batch_transform (`MultiCropBatchTransform`): the decoding and multi-crop transform of one batch of rows.
        seed_column_name (`str`, *optional*, defaults to `"view_seed"`): the integer column holding each row's seed.
    """

    def __init__(self, batch_transform: MultiCropBatchTransform, seed_column_name: str = VIEW_SEED_COLUMN):
        self.batch_transform = batch_transform
        self.seed_column_name = seed_column_name

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        seeds = batch[self.seed_column_name]
        rows = []
        for row, seed in enumerate(seeds):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                rows.append(self.batch_transform({key: values[row : row + 1] for key, values in batch.items()}))
        keys = list(dict.fromkeys(key for output in rows for key in output))
        return {key: [value for output in rows for value in output.get(key, [None])] for key in keys}

