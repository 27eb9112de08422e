"""
The data side of LeJEPA pretraining: loading image datasets, robust decoding, the multi-crop transform and the
collator.

The path of one image is

`datasets` row (`{"bytes", "path"}`, undecoded) -> `decode_image` -> `to_rgb_image` -> `MultiCropTransform`
(`Vg` global and `Vl` local views) -> `MultiCropCollator` (`(B, Vg, C, H, W)` and `(B, Vl, C, h, w)`).

`MultiCropBatchTransform` ties decoding and the transform together for `datasets.Dataset.with_transform` and
`datasets.IterableDataset.map`; `prepare_pretraining_dataset` attaches it to a dataset. Images that fail to decode are
skipped and counted by a `BadSampleCounter`, which stops the run with a clear error only when too many fail.
"""

from __future__ import annotations

import collections
import io
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as nn_functional
from torch.utils.data import get_worker_info
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tv_functional
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import logging

logger = logging.get_logger(__name__)

# File extensions that the webdataset builder of `datasets` decodes as images, used to find the image column of
# datasets whose features are not typed.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "pgm", "pbm", "pnm", "bmp", "tif", "tiff", "gif")
# Column names taken as labels when they hold integers (ClassLabel columns are always taken). `cls` is the
# webdataset convention.
LABEL_COLUMN_NAMES = ("label", "labels", "cls")
_INTERPOLATIONS = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


# ----------------------------------------------------------------------------------------------------------------
# Decoding and conversion to RGB
# ----------------------------------------------------------------------------------------------------------------


class ImageDecodeError(ValueError):
    """
    Raised when a sample cannot be turned into an RGB image: corrupt or truncated bytes, a missing file, an image
    with no pixels or more than the allowed number of pixels, or a value that is not an image at all.

    Args:
        message (`str`): what went wrong, for logs.
        kind (`str`, *optional*, defaults to `"unreadable"`):
            a short category (`"missing"`, `"wrong type"`, `"unreadable"`, `"too large"`, `"empty"`,
            `"unsupported"`) under which `BadSampleCounter` tallies the failure.
    """

    def __init__(self, message: str, kind: str = "unreadable"):
        super().__init__(message)
        self.kind = kind


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """
    Maps an array of any numeric dtype to `uint8` without clipping bright images to white.

    - `bool`: `False -> 0`, `True -> 255`.
    - `uint8`: unchanged.
    - `uint16` (16-bit PNG/TIFF, PIL modes `I;16*`): divided by 257, so 65535 maps to 255.
    - other integers (PIL mode `I` is `int32`): values in `[0, 255]` are kept, values in `[0, 65535]` are treated as
      16-bit and divided by 257, anything else (negative or wider) is min-max scaled to `[0, 255]`.
    - floats (PIL mode `F`): values in `[0, 1]` are multiplied by 255, anything else is min-max scaled. NaNs become
      the minimum.
    """
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ImageDecodeError(f"Cannot read an image from an array of dtype {array.dtype}.", kind="wrong type")
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, np.min(values[finite]) if finite.any() else 0.0)
    low, high = float(values.min()), float(values.max())
    if np.issubdtype(array.dtype, np.floating):
        if low >= 0.0 and high <= 1.0:
            values = values * 255.0
        else:
            values = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    elif array.dtype == np.uint16 or (low >= 0 and 255 < high <= 65535):
        values = values / 257.0
    elif not (low >= 0 and high <= 255):
        values = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _array_to_pil(array: np.ndarray | torch.Tensor) -> PIL.Image.Image:
    """
    Turns an array into a PIL image of mode `L`, `LA`, `RGB` or `RGBA`. Accepts `(H, W)`, `(H, W, C)` and, for
    tensors or when the last axis cannot be channels, `(C, H, W)`, with `C` in 1..4.
    """
    is_tensor = isinstance(array, torch.Tensor)
    if is_tensor:
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and (is_tensor or array.shape[-1] not in (1, 2, 3, 4)):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ImageDecodeError(
            f"Cannot read an image from an array of shape {tuple(array.shape)}; expected (H, W), (H, W, C) or "
            "(C, H, W) with 1 to 4 channels.",
            kind="wrong type",
        )
    if array.size == 0:
        raise ImageDecodeError(f"The image array has no pixels (shape {tuple(array.shape)}).", kind="empty")
    return PIL.Image.fromarray(np.ascontiguousarray(_scale_to_uint8(array)))


def to_rgb_image(
    image: PIL.Image.Image | np.ndarray | torch.Tensor, background_color: Sequence[int] = (255, 255, 255)
) -> PIL.Image.Image:
    """
    Converts an image of any PIL mode, a numpy array or a tensor to a 3-channel 8-bit RGB PIL image.

    - `RGB` images are returned as they are.
    - Images with transparency (`LA`, `RGBA`, `PA`, `La`, `RGBa`, or `P`/`L`/`RGB` with a transparency key) are
      composited onto `background_color`, as `transformers`' `convert_to_rgb` does, rather than revealing whatever
      colour the transparent pixels happen to hold.
    - High bit depth images (`I;16*`, `I`, `F` and non-`uint8` arrays) are rescaled to 0..255 (see
      `_scale_to_uint8`) instead of being clipped, which would turn most 16-bit images white.
    - Other modes (`1`, `L`, `P`, `CMYK`, `YCbCr`, `HSV`, ...) use PIL's own conversion.

    Args:
        image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
            The image. Arrays are `(H, W)` or `(H, W, C)`; tensors `(C, H, W)` (or `(H, W)`).
        background_color (`Sequence[int]`, *optional*, defaults to white):
            RGB colour behind transparent pixels.

    Raises:
        `ImageDecodeError`: for an image without pixels, a value that is not an image, or a mode PIL cannot convert.
    """
    if isinstance(image, (np.ndarray, torch.Tensor)):
        image = _array_to_pil(image)
    if not isinstance(image, PIL.Image.Image):
        raise ImageDecodeError(
            f"Expected a PIL image, a numpy array or a tensor, got {type(image).__name__}.", kind="wrong type"
        )
    if image.width == 0 or image.height == 0:
        raise ImageDecodeError(f"The image has no pixels (size {image.size}).", kind="empty")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "F") or mode.startswith("I;"):
        return PIL.Image.fromarray(_scale_to_uint8(np.asarray(image))).convert("RGB")
    try:
        if mode in ("LA", "RGBA", "PA", "La", "RGBa") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            canvas = PIL.Image.new("RGBA", rgba.size, tuple(background_color) + (255,))
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return image.convert("RGB")
    except ValueError as error:  # e.g. "conversion from LAB to RGB not supported"
        message = f"Cannot convert an image of mode {mode} to RGB: {error}"
        raise ImageDecodeError(message, kind="unsupported") from error


def _read_bytes(path: str) -> bytes:
    """Reads a local file, or a remote or chained URL (`hf://`, `zip://...::https://...`) through `datasets`."""
    if os.path.exists(path):
        with open(path, "rb") as file:
            return file.read()
    from datasets.utils.file_utils import is_local_path, xopen

    if is_local_path(path):
        raise FileNotFoundError(f"No such file: {path!r}")
    with xopen(path, "rb") as file:
        return file.read()


def decode_image(
    value: Any, max_image_pixels: int | None = None, min_pixels: int | None = None
) -> PIL.Image.Image:
    """
    Decodes one image, fully (so that truncated files fail here and not later), applying its EXIF orientation.

    This replaces the decoding of `datasets.Image` so that a bad file costs one sample instead of the whole run.
    `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` is left as it is (so, by default, truncated files are rejected), and
    `PIL.Image.MAX_IMAGE_PIXELS` is not modified.

    Args:
        value (`dict`, `bytes`, `str`, `pathlib.Path`, `PIL.Image.Image`, `np.ndarray` or `torch.Tensor`):
            A `datasets.Image(decode=False)` value `{"bytes": ..., "path": ...}` (bytes win over the path), raw
            encoded bytes, a path or URL, or an image that is already decoded (returned after the size checks;
            arrays are converted with `to_rgb_image`).
        max_image_pixels (`int`, *optional*):
            Images with more pixels are rejected as decompression bombs before their pixels are decoded. Defaults
            to `PIL.Image.MAX_IMAGE_PIXELS` (about 89 million) read at call time; `PIL` itself also refuses images
            above twice its own limit, so raise `PIL.Image.MAX_IMAGE_PIXELS` too to accept larger ones.
        min_pixels (`int`, *optional*):
            When set, a JPEG is decoded at the smallest of libjpeg's reduced scales (1/2, 1/4, 1/8, through PIL's
            `Image.draft`) that keeps at least this many pixels (and its aspect ratio), which is several times faster
            than a full decode; other formats are decoded fully. Images with fewer pixels are decoded fully.

    Returns:
        `PIL.Image.Image`: the decoded image, in its own mode.

    Raises:
        `ImageDecodeError`: for anything that does not decode to an image with at least one pixel.
    """
    if max_image_pixels is None:
        max_image_pixels = PIL.Image.MAX_IMAGE_PIXELS
    if isinstance(value, (np.ndarray, torch.Tensor)):
        image = to_rgb_image(value)
        _check_size(image.size, max_image_pixels)
        return image
    if isinstance(value, PIL.Image.Image):
        _check_size(value.size, max_image_pixels)
        return value
    if value is None:
        raise ImageDecodeError("The sample has no image.", kind="missing")

    path = None
    data = None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data is None and path is None:
            raise ImageDecodeError("The image has neither bytes nor a path.", kind="missing")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = value
    elif isinstance(value, (str, Path)):
        path = str(value)
    else:
        raise ImageDecodeError(
            f"Expected image bytes, a path or an image, got a value of type {type(value).__name__}.",
            kind="wrong type",
        )
    if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"Expected image bytes, got {type(data).__name__}.", kind="wrong type")
    if path is not None and not isinstance(path, (str, Path)):
        raise ImageDecodeError(f"Expected an image path, got {type(path).__name__}.", kind="wrong type")

    where = f" ({path})" if path else ""
    try:
        if data is None:
            data = _read_bytes(str(path))
        if len(data) == 0:
            raise ImageDecodeError(f"The image file is empty{where}.", kind="empty")
        with warnings.catch_warnings():
            # Our own `max_image_pixels` check below decides; PIL's warning would only be noise.
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
            _check_size(image.size, max_image_pixels, where)
            if min_pixels is not None and image.format == "JPEG" and image.width * image.height > min_pixels:
                factor = math.sqrt(min_pixels / (image.width * image.height))
                image.draft(image.mode, (math.ceil(image.width * factor), math.ceil(image.height * factor)))
            image.load()
    except ImageDecodeError:
        raise
    except PIL.Image.DecompressionBombError as error:
        raise ImageDecodeError(f"Decompression bomb{where}: {error}", kind="too large") from error
    except FileNotFoundError as error:
        raise ImageDecodeError(f"Image file not found{where}.", kind="missing") from error
    except Exception as error:  # PIL raises many exception types (OSError, SyntaxError, ValueError, ...) on bad data
        raise ImageDecodeError(f"Cannot decode the image{where}: {type(error).__name__}: {error}") from error

    try:
        if image.getexif().get(PIL.Image.ExifTags.Base.Orientation, 1) != 1:
            image = PIL.ImageOps.exif_transpose(image)
    except Exception as error:  # a broken EXIF block should not cost the image
        logger.debug(f"Ignoring unreadable EXIF data{where}: {error}")
    return image


def _check_size(size: tuple[int, int], max_image_pixels: int | None, where: str = "") -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"The image has no pixels (size {width}x{height}){where}.", kind="empty")
    if max_image_pixels is not None and width * height > max_image_pixels:
        raise ImageDecodeError(
            f"The image has {width}x{height} = {width * height} pixels, more than max_image_pixels="
            f"{max_image_pixels}{where}: treated as a decompression bomb.",
            kind="too large",
        )


# ----------------------------------------------------------------------------------------------------------------
# Multi-crop transform
# ----------------------------------------------------------------------------------------------------------------


def _per_view(probability: float | Sequence[float], index: int) -> float:
    if isinstance(probability, (int, float)):
        return float(probability)
    return float(probability[index % len(probability)])


@dataclass
class MultiCropConfig:
    """
    Every setting of `MultiCropTransform`. The defaults are the LeJEPA recipe (2 x 224 px global views with crop
    scale (0.3, 1), 6 x 96 px local views with crop scale (0.05, 0.3), flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1)
    with p 0.8, grayscale 0.2, Gaussian blur, solarize 0.2, ImageNet normalisation).

    Blur and solarization follow the asymmetric recipe of BYOL/DINO: global view `i` is blurred with probability
    `global_blur_prob[i % len(global_blur_prob)]` (1.0 for the first, 0.1 for the second, and so on alternately
    for more global views) and solarized with probability `global_solarize_prob[i % len(...)]` (0.0, then 0.2);
    local views are blurred with `local_blur_prob` and solarized with `local_solarize_prob`. Give a single float
    to use one probability for every global view.

    Args:
        num_global_views (`int`, defaults to 2): global views per image, `Vg`.
        num_local_views (`int`, defaults to 6): local views per image, `Vl` (0 for none).
        global_image_size (`int`, defaults to 224): side of the global views.
        local_image_size (`int`, defaults to 96): side of the local views.
        global_crop_scale (`tuple[float, float]`, defaults to `(0.3, 1.0)`): `RandomResizedCrop` area range.
        local_crop_scale (`tuple[float, float]`, defaults to `(0.05, 0.3)`): `RandomResizedCrop` area range.
        crop_ratio (`tuple[float, float]`, defaults to `(3/4, 4/3)`): `RandomResizedCrop` aspect ratio range.
        interpolation (`str`, defaults to `"bilinear"`): `"bilinear"`, `"bicubic"` or `"nearest"` (antialiased
            when downsampling).
        horizontal_flip_prob (`float`, defaults to 0.5).
        color_jitter_prob (`float`, defaults to 0.8): probability of applying the `ColorJitter` below.
        brightness, contrast, saturation, hue (`float`, default to 0.4, 0.4, 0.2, 0.1): `ColorJitter` strengths.
        grayscale_prob (`float`, defaults to 0.2).
        global_blur_prob (`float` or `tuple[float, ...]`, defaults to `(1.0, 0.1)`): see above.
        local_blur_prob (`float`, defaults to 0.5).
        blur_sigma (`tuple[float, float]`, defaults to `(0.1, 2.0)`): range of the blur's standard deviation in
            pixels of the view, drawn uniformly each time.
        blur_kernel_size (`int`, *optional*): odd kernel side; by default `2 * ceil(3 * blur_sigma[1]) + 1` (13),
            reduced to fit views smaller than the kernel.
        global_solarize_prob (`float` or `tuple[float, ...]`, defaults to `(0.0, 0.2)`): see above.
        local_solarize_prob (`float`, defaults to 0.0).
        solarize_threshold (`int`, defaults to 128): pixels at or above it (on the 0..255 scale) are inverted.
        image_mean (`tuple[float, float, float]`, defaults to ImageNet's): per-channel mean, on the 0..1 scale.
        image_std (`tuple[float, float, float]`, defaults to ImageNet's): per-channel standard deviation.
        background_color (`tuple[int, int, int]`, defaults to white): colour behind transparent pixels.
    """

    num_global_views: int = 2
    num_local_views: int = 6
    global_image_size: int = 224
    local_image_size: int = 96
    global_crop_scale: tuple[float, float] = (0.3, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.3)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bilinear"
    horizontal_flip_prob: float = 0.5
    color_jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    global_blur_prob: float | tuple[float, ...] = (1.0, 0.1)
    local_blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_size: int | None = None
    global_solarize_prob: float | tuple[float, ...] = (0.0, 0.2)
    local_solarize_prob: float = 0.0
    solarize_threshold: int = 128
    image_mean: tuple[float, ...] = tuple(IMAGENET_DEFAULT_MEAN)
    image_std: tuple[float, ...] = tuple(IMAGENET_DEFAULT_STD)
    background_color: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self):
        for name in ("global_crop_scale", "local_crop_scale", "crop_ratio", "blur_sigma", "background_color"):
            setattr(self, name, tuple(getattr(self, name)))
        for name in ("global_blur_prob", "global_solarize_prob"):
            if not isinstance(getattr(self, name), (int, float)):
                setattr(self, name, tuple(float(p) for p in getattr(self, name)))
        self.image_mean = self._channels("image_mean")
        self.image_std = self._channels("image_std")
        self._check_values()

    def _channels(self, name: str) -> tuple[float, float, float]:
        value = getattr(self, name)
        values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise ValueError(f"`{name}` needs 1 or 3 values (one per RGB channel), got {value}.")
        return tuple(values)

    def _check_values(self) -> None:
        if self.num_global_views < 1:
            raise ValueError(f"`num_global_views` must be at least 1, got {self.num_global_views}.")
        if self.num_local_views < 0:
            raise ValueError(f"`num_local_views` must be >= 0, got {self.num_local_views}.")
        for name in ("global_image_size", "local_image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        for name in ("global_crop_scale", "local_crop_scale"):
            low, high = getattr(self, name)
            if not 0.0 < low <= high <= 1.0:
                raise ValueError(f"`{name}` must be (min, max) with 0 < min <= max <= 1, got {(low, high)}.")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"`crop_ratio` must be (min, max) with 0 < min <= max, got {self.crop_ratio}.")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"`interpolation` must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}.")
        probabilities = {
            name: getattr(self, name)
            for name in ("horizontal_flip_prob", "color_jitter_prob", "grayscale_prob", "local_blur_prob",
                         "local_solarize_prob")
        }
        for name in ("global_blur_prob", "global_solarize_prob"):
            values = getattr(self, name)
            if not isinstance(values, (int, float)) and len(values) == 0:
                raise ValueError(f"`{name}` must be a probability or a non-empty tuple of them.")
            for index, value in enumerate([values] if isinstance(values, (int, float)) else values):
                probabilities[f"{name}[{index}]"] = value
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1], got {value}.")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ValueError(f"`blur_sigma` must be (min, max) with 0 < min <= max, got {self.blur_sigma}.")
        if self.blur_kernel_size is not None and (self.blur_kernel_size < 1 or self.blur_kernel_size % 2 == 0):
            raise ValueError(f"`blur_kernel_size` must be a positive odd integer, got {self.blur_kernel_size}.")
        if min(self.image_std) <= 0:
            raise ValueError(f"`image_std` must be positive, got {self.image_std}.")

    @classmethod
    def given(cls, config: MultiCropConfig | None, fields: dict[str, Any]) -> MultiCropConfig:
        """`config`, or one built from `fields` (the keyword arguments of a transform taking either, not both)."""
        if config is not None and fields:
            raise ValueError("Give either a MultiCropConfig or its fields as keyword arguments, not both.")
        return config if config is not None else cls(**fields)

    @classmethod
    def from_lejepa_config(cls, config: Any, image_processor: Any = None, **overrides) -> MultiCropConfig:
        """
        Builds the settings from a `LeJepaConfig` (views, sizes, crop scales) and an image processor (normalisation).

        Args:
            config (`LeJepaConfig`):
                Supplies `num_global_views`, `num_local_views`, `global_image_size`, `local_image_size`,
                `global_crop_scale` and `local_crop_scale`.
            image_processor (*optional*):
                Any object with `image_mean` and `image_std` attributes (e.g. a `ViTImageProcessor`); ImageNet's
                values are used when it is `None` or lacks them.
            overrides:
                Any `MultiCropConfig` field, applied last.
        """
        settings = {
            name: getattr(config, name)
            for name in ("num_global_views", "num_local_views", "global_image_size", "local_image_size",
                         "global_crop_scale", "local_crop_scale")
        }
        for name in ("image_mean", "image_std"):
            value = getattr(image_processor, name, None) if image_processor is not None else None
            if value is not None:
                settings[name] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"Unknown MultiCropConfig field(s) {unknown}; known fields: {sorted(known)}.")
        settings.update(overrides)
        return cls(**settings)


class _SeparableGaussianBlur(v2.GaussianBlur):
    """
    `transforms.v2.GaussianBlur` computed as two 1-D convolutions on tensors (about 5x faster than the 2-D kernel
    for a 13-pixel kernel on a 224 px view; the same result up to rounding). PIL images use torchvision's kernel.
    """

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, PIL.Image.Image):
            return super().transform(inpt, params)
        kernel_height, kernel_width = self.kernel_size[1], self.kernel_size[0]
        sigma_x, sigma_y = params["sigma"]
        image = inpt.unsqueeze(0) if inpt.ndim == 3 else inpt
        dtype = image.dtype
        output = image if image.is_floating_point() else image.to(torch.float32)
        channels = output.shape[-3]
        output = nn_functional.pad(
            output, [kernel_width // 2, kernel_width // 2, kernel_height // 2, kernel_height // 2], mode="reflect"
        )
        kernel_x = _gaussian_kernel1d(kernel_width, sigma_x, output.dtype, output.device)
        kernel_y = _gaussian_kernel1d(kernel_height, sigma_y, output.dtype, output.device)
        output = nn_functional.conv2d(output, kernel_x.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        output = nn_functional.conv2d(output, kernel_y.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
        if not dtype.is_floating_point:
            output = output.round_().clamp_(0, 255).to(dtype)
        output = output.squeeze(0) if inpt.ndim == 3 else output
        return tv_tensors.wrap(output, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else output


def _gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (x / sigma).pow(2))
    return kernel / kernel.sum()


class MultiCropTransform:
    """
    The LeJEPA multi-crop augmentation: `Vg` global and `Vl` local views of one image, each an independent
    `RandomResizedCrop`, flip, colour jitter, grayscale, blur and solarization, then float conversion and
    normalisation.

    Any input is first converted with `to_rgb_image` (every PIL mode, numpy arrays, tensors; tiny images are
    upsampled by the crop). The augmentations run on `uint8` tensors with `torchvision.transforms.v2`; the last
    step, `ToDtype(float32, scale=True)` followed by `Normalize(image_mean, image_std)`, is fused: each view is
    written once into the output tensor and all views are normalised in place together.

    Args:
        config (`MultiCropConfig`, *optional*): the settings; `MultiCropConfig()` (the LeJEPA recipe) by default.
        kwargs: `MultiCropConfig` fields, when `config` is not given.

    Example:

    ```python
    >>> import PIL.Image
    >>> from modeling_lejepa import LeJepaConfig
    >>> from trainer.data import MultiCropTransform

    >>> transform = MultiCropTransform.from_lejepa_config(LeJepaConfig.from_preset("vit-tiny-test"))
    >>> views = transform(PIL.Image.new("RGB", (40, 30)))
    >>> views["pixel_values"].shape, views["local_pixel_values"].shape
    (torch.Size([2, 3, 32, 32]), torch.Size([6, 3, 16, 16]))
    ```
    """

    def __init__(self, config: MultiCropConfig | None = None, **kwargs):
        self.config = MultiCropConfig.given(config, kwargs)
        c = self.config
        self.global_views = [
            self._view_pipeline(c.global_image_size, c.global_crop_scale, _per_view(c.global_blur_prob, index),
                                _per_view(c.global_solarize_prob, index))
            for index in range(c.num_global_views)
        ]
        self.local_view = self._view_pipeline(
            c.local_image_size, c.local_crop_scale, c.local_blur_prob, c.local_solarize_prob
        )
        # (x / 255 - mean) / std == (x - 255 * mean) / (255 * std)
        self._shift = torch.tensor(c.image_mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self._scale = 1.0 / (torch.tensor(c.image_std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    @classmethod
    def from_lejepa_config(cls, config: Any, image_processor: Any = None, **overrides) -> MultiCropTransform:
        """`MultiCropTransform(MultiCropConfig.from_lejepa_config(config, image_processor, **overrides))`."""
        return cls(MultiCropConfig.from_lejepa_config(config, image_processor, **overrides))

    def _view_pipeline(
        self, size: int, scale: tuple[float, float], blur_prob: float, solarize_prob: float
    ) -> v2.Compose:
        c = self.config
        steps: list[Callable] = [
            v2.RandomResizedCrop(
                size, scale=scale, ratio=c.crop_ratio, interpolation=_INTERPOLATIONS[c.interpolation], antialias=True
            ),
        ]
        if c.horizontal_flip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(c.horizontal_flip_prob))
        if c.color_jitter_prob > 0 and any((c.brightness, c.contrast, c.saturation, c.hue)):
            jitter = v2.ColorJitter(c.brightness, c.contrast, c.saturation, c.hue)
            steps.append(v2.RandomApply([jitter], p=c.color_jitter_prob))
        if c.grayscale_prob > 0:
            steps.append(v2.RandomGrayscale(c.grayscale_prob))
        if blur_prob > 0:
            kernel_size = c.blur_kernel_size or 2 * math.ceil(3 * c.blur_sigma[1]) + 1
            kernel_size = min(kernel_size, 2 * size - 1)  # reflect padding needs the half kernel inside the view
            steps.append(v2.RandomApply([_SeparableGaussianBlur(kernel_size, c.blur_sigma)], p=blur_prob))
        if solarize_prob > 0:
            steps.append(v2.RandomSolarize(threshold=c.solarize_threshold, p=solarize_prob))
        return v2.Compose(steps)

    def _render(self, image: torch.Tensor, pipelines: Sequence[v2.Compose], size: int) -> torch.Tensor:
        views = torch.empty((len(pipelines), 3, size, size), dtype=torch.float32)
        for index, pipeline in enumerate(pipelines):
            views[index].copy_(pipeline(image))
        return views.sub_(self._shift).mul_(self._scale)

    def __call__(self, image: PIL.Image.Image | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`): one image, in any mode (see `to_rgb_image`).

        Returns:
            `dict[str, torch.Tensor]`: `"pixel_values"` of shape `(Vg, 3, H, W)` and, when `Vl > 0`,
            `"local_pixel_values"` of shape `(Vl, 3, h, w)`, both `float32` and normalised.
        """
        c = self.config
        pixels = tv_functional.pil_to_tensor(to_rgb_image(image, c.background_color))
        output = {"pixel_values": self._render(pixels, self.global_views, c.global_image_size)}
        if c.num_local_views > 0:
            output["local_pixel_values"] = self._render(
                pixels, [self.local_view] * c.num_local_views, c.local_image_size
            )
        return output

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


class DecodeResizeTransform:
    """
    The DataLoader workers' part of `augment_on_device`: one image, resized once to a bounded size, as `uint8`. The
    views are then cut and augmented on the training device (`trainer.device_views.DeviceMultiCrop`).

    The size keeps enough pixels for the largest view: with `target_pixels = max(S^2 / min_scale)` over the global and
    local views (`S` the view side, `min_scale` the smallest crop area fraction; 184,320 pixels for 2 x 224 px at
    scale 0.3 and 6 x 96 px at 0.05), the smallest crop still has about `S x S` pixels. `MultiCropBatchTransform`
    decodes JPEGs at reduced size down to `target_pixels` (`decode_image(min_pixels=...)`, libjpeg's DCT scaling);
    an image left with more than `2 * target_pixels` pixels, or a long side above `4 * sqrt(target_pixels)`, is then
    resized (bilinear, antialiased) down to `target_pixels`, keeping its aspect ratio. Smaller images are never
    upsampled. Crops are then drawn from each image's whole extent, as on the CPU path.

    Args:
        config (`MultiCropConfig`, *optional*): the view settings (`MultiCropConfig()` by default); only the sizes,
            crop scales and `background_color` are used here.
        target_pixels (`int`, *optional*): overrides the pixel target above.

    Example:

    ```python
    >>> import PIL.Image
    >>> from trainer.data import DecodeResizeTransform, MultiCropConfig

    >>> transform = DecodeResizeTransform(MultiCropConfig())
    >>> transform.target_pixels
    184320
    >>> transform(PIL.Image.new("RGB", (1024, 768)))["images"].shape  # 1024 x 768 reduced to ~184k pixels
    torch.Size([3, 372, 496])
    ```
    """

    output_key = "images"

    def __init__(self, config: MultiCropConfig | None = None, target_pixels: int | None = None):
        self.config = config if config is not None else MultiCropConfig()
        c = self.config
        if target_pixels is None:
            needed = [c.global_image_size**2 / c.global_crop_scale[0]]
            if c.num_local_views > 0:
                needed.append(c.local_image_size**2 / c.local_crop_scale[0])
            target_pixels = math.ceil(max(needed))
        if target_pixels < 1:
            raise ValueError(f"`target_pixels` must be positive, got {target_pixels}.")
        self.target_pixels = int(target_pixels)
        self.max_side = math.ceil(4 * math.sqrt(self.target_pixels))

    @property
    def min_pixels(self) -> int:
        """What `MultiCropBatchTransform` passes to `decode_image(min_pixels=...)` for reduced-size JPEG decoding."""
        return self.target_pixels

    @classmethod
    def from_lejepa_config(cls, config: Any, image_processor: Any = None, **overrides) -> DecodeResizeTransform:
        """`DecodeResizeTransform(MultiCropConfig.from_lejepa_config(config, image_processor, **overrides))`."""
        return cls(MultiCropConfig.from_lejepa_config(config, image_processor, **overrides))

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The `(width, height)` an image of this size is resized to (itself when it is small enough)."""
        pixels = width * height
        if pixels <= 2 * self.target_pixels and max(width, height) <= self.max_side:
            return width, height
        factor = min(math.sqrt(self.target_pixels / pixels), self.max_side / max(width, height))
        return max(1, round(width * factor)), max(1, round(height * factor))

    def __call__(self, image: PIL.Image.Image | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Returns:
            `dict[str, torch.Tensor]`: `"images"`, `uint8` of shape `(3, h, w)`.
        """
        image = to_rgb_image(image, self.config.background_color)
        size = self.output_size(*image.size)
        if size != image.size:
            image = image.resize(size, PIL.Image.Resampling.BILINEAR)
        return {self.output_key: tv_functional.pil_to_tensor(image)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_pixels={self.target_pixels})"


# ----------------------------------------------------------------------------------------------------------------
# Bad sample accounting, batch transform for `datasets`, collator
# ----------------------------------------------------------------------------------------------------------------


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
    row carries one `uint8` image under `"images"` instead of views.

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
    """

    def __init__(
        self,
        transform: Callable[[PIL.Image.Image], dict[str, torch.Tensor]],
        image_column_name: str,
        label_column_name: str | None = None,
        counter: BadSampleCounter | None = None,
        max_image_pixels: int | None = None,
        drop_bad_samples: bool = False,
        report_skipped: bool = False,
    ):
        self.transform = transform
        self.image_column_name = image_column_name
        self.label_column_name = label_column_name
        self.counter = counter if counter is not None else BadSampleCounter()
        self.max_image_pixels = max_image_pixels
        self.drop_bad_samples = drop_bad_samples
        self.report_skipped = report_skipped
        self._unreported = 0  # bad rows dropped since the last good row, not yet reported
        self.background_color = getattr(getattr(transform, "config", None), "background_color", (255, 255, 255))
        # `DecodeResizeTransform`: reduced-size JPEG decoding, and the key of its output
        self.min_pixels = getattr(transform, "min_pixels", None)
        self.output_key = getattr(transform, "output_key", "pixel_values")

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
                image = decode_image(value, self.max_image_pixels, min_pixels=self.min_pixels)
                image = to_rgb_image(image, self.background_color)
                views = self.transform(image)
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
        first = next((row for row in rows if row is not None), {})
        keys = [self.output_key] + [key for key in first if key != self.output_key]
        output = {key: [None if row is None else row[key] for row in rows] for key in keys}
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

    Examples from `DecodeResizeTransform` (`augment_on_device`) carry one `uint8` image `"images"` `(3, h, w)` each
    instead of views: they are copied once into a canvas `images` `(B, 3, H_max, W_max)` (`uint8`, the images at the
    top left; each image's last row and column are repeated once into the padding, so that bilinear crops touching
    its border see its own edge) with their true sizes in `image_sizes` `(B, 2)` (height, width).

    Examples that are `None` or whose `pixel_values` (or `images`) is `None` (failed decodes) are dropped, so a
    batch may be smaller than the batch size; they are counted in `num_skipped` (per process: DataLoader workers keep
    their own copies).

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
        """The `uint8` images `(3, h, w)` in one canvas `(B, 3, H_max, W_max)` (in shared memory inside workers) and
        their sizes `(B, 2)`."""
        sizes = torch.tensor([image.shape[-2:] for image in images], dtype=torch.long)
        height, width = (int(value) for value in sizes.max(dim=0).values)
        shape = (len(images), 3, height, width)
        if self.shared_memory and get_worker_info() is not None:
            storage = images[0]._typed_storage()._new_shared(math.prod(shape), device=images[0].device)
            canvas = images[0].new(storage).resize_(*shape)
        else:
            canvas = images[0].new_empty(shape)
        if bool((sizes != sizes[0]).any()):
            canvas.zero_()  # the padding beyond the repeated row and column is never sampled, but keep it defined
        for slot, image in zip(canvas, images):
            h, w = image.shape[-2:]
            slot[:, :h, :w] = image
            if w < width:  # repeat the last column, then the last row (with its corner), once
                slot[:, :h, w] = image[:, :, w - 1]
            if h < height:
                slot[:, h, : min(w + 1, width)] = slot[:, h - 1, : min(w + 1, width)]
        return {"images": canvas, "image_sizes": sizes}

    def __call__(self, examples: Sequence[dict[str, Any] | None]) -> dict[str, torch.Tensor]:
        kept = [example for example in examples if example is not None and _has_pixel_values(example)]
        num_skipped = len(examples) - len(kept) + sum(int(example.get("num_skipped") or 0) for example in kept)
        self.num_skipped += num_skipped
        if not kept:
            raise RuntimeError(
                f"Every example of this batch ({len(examples)}) failed to decode, so there is nothing to train on. "
                "Check the image column (`--image_column_name`) and the logged decode errors."
            )
        if kept[0].get("images") is not None:
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


# ----------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------


def _feature_is_image(feature: Any) -> bool:
    return isinstance(feature, datasets.Image)


def _feature_is_integer(feature: Any) -> bool:
    return isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and ("int" in feature.dtype)
    )


def detect_image_column(features: datasets.Features | None, image_column_name: str | None = None) -> str:
    """
    Finds the image column: `image_column_name` when given (it must exist, unless the features are unknown), else
    the only `datasets.Image` column, else the only column named like an image file extension (`jpg`, `png`,
    `webp`, ... as in webdataset shards).

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
        candidates = [name for name in columns if name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS]
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


def _builder_for_data_files(data_files: str | Sequence[str] | dict[str, Any]) -> str:
    """Picks the `datasets` builder from the extension of the data files."""
    if isinstance(data_files, dict):
        files = [file for value in data_files.values() for file in ([value] if isinstance(value, str) else value)]
    else:
        files = [data_files] if isinstance(data_files, (str, Path)) else list(data_files)
    if not files:
        raise ValueError("`data_files` is empty.")
    builders = set()
    for file in files:
        name = str(file).lower()
        if name.endswith(".parquet"):
            builders.add("parquet")
        elif name.endswith(".tar"):
            builders.add("webdataset")
        elif name.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            builders.add("imagefolder")
        else:
            raise ValueError(
                f"Cannot tell the format of data file {file!r}: use .parquet files, webdataset .tar shards or "
                "image files, or pass the builder name (e.g. 'parquet') as `--dataset_name` with `--data_files`."
            )
    if len(builders) > 1:
        raise ValueError(f"`data_files` mixes formats ({sorted(builders)}); use one format per run.")
    return builders.pop()


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
    - `train_dir`: a folder of images (optionally in one sub-folder per class), through the `imagefolder` builder;
    - `data_files`: files or glob patterns; `.parquet` files use the `parquet` builder, `.tar` shards the
      `webdataset` builder, image files the `imagefolder` builder.

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
        dataset = datasets.load_dataset("imagefolder", data_dir=train_dir, data_files=data_files, **common)
    elif data_files is not None:
        dataset = datasets.load_dataset(_builder_for_data_files(data_files), data_files=data_files, **common)
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


def check_num_shards(
    dataset: datasets.Dataset | datasets.IterableDataset,
    world_size: int,
    dataloader_num_workers: int = 0,
    strict: bool = False,
) -> int | None:
    """
    Checks that a streamed dataset has enough shards for distributed training.

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
    transform: Callable[[PIL.Image.Image], dict[str, torch.Tensor]],
    image_column_name: str,
    label_column_name: str | None = None,
    counter: BadSampleCounter | None = None,
    max_image_pixels: int | None = None,
    map_batch_size: int = 16,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Attaches robust decoding and the multi-crop transform to a dataset, without a preprocessing pass.

    The image column is cast to `datasets.Image(decode=False)` (a metadata change for `Image` columns; binary or
    path columns are cast the same way), so that `decode_image` sees the raw bytes. A map-style dataset gets the
    transform through `with_transform` (run on the fly by DataLoader workers; bad samples come out as `None` and the
    collator drops them). A streamed dataset gets it through `map(batched=True, batch_size=map_batch_size)` with
    the original columns removed (when its features are known), followed by a `filter` that leaves bad samples out
    of the stream.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): from `load_pretraining_dataset`, for instance.
        transform (`Callable`): typically a `MultiCropTransform`.
        image_column_name (`str`): the image column.
        label_column_name (`str`, *optional*): passed through as `labels`.
        counter (`BadSampleCounter`, *optional*): counts bad samples and enforces `max_bad_fraction`.
        max_image_pixels (`int`, *optional*): see `decode_image`.
        map_batch_size (`int`, defaults to 16): images transformed per `map` call when streaming; keep it small,
            as each image gives `Vg + Vl` float views.

    Raises:
        `ValueError`: when the image column holds something that cannot be an image (e.g. integers).
    """
    features = dataset.features
    if features is not None:
        if image_column_name not in features:
            raise ValueError(
                f"Image column {image_column_name!r} not found; the dataset has columns {list(features)}. Pass one "
                "of them as `--image_column_name`."
            )
        feature = features[image_column_name]
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
    streaming = isinstance(dataset, datasets.IterableDataset)
    batch_transform = MultiCropBatchTransform(
        transform,
        image_column_name,
        label_column_name=label_column_name,
        counter=counter,
        max_image_pixels=max_image_pixels,
        report_skipped=streaming,  # the stream's filter drops bad rows before the collator
    )
    if not streaming:
        return dataset.with_transform(batch_transform)
    # Bad rows come out of `map` as `None` and are filtered out, which also works when the stream's columns are
    # unknown (then they cannot be removed and stay beside the views; the collator ignores them).
    column_names = list(features) if features is not None else None
    dataset = dataset.map(batch_transform, batched=True, batch_size=map_batch_size, remove_columns=column_names)
    return dataset.filter(_has_pixel_values)


def _has_pixel_values(example: dict[str, Any]) -> bool:
    return example.get("pixel_values") is not None or example.get("images") is not None


# ----------------------------------------------------------------------------------------------------------------
# Validation data: fixed views
# ----------------------------------------------------------------------------------------------------------------

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


def prepare_validation_dataset(
    dataset: datasets.Dataset,
    transform: Callable[[PIL.Image.Image], dict[str, torch.Tensor]],
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
    # the checks and the cast of the image column; the transform is then replaced by the seeded one
    dataset = prepare_pretraining_dataset(
        dataset, transform, image_column_name, label_column_name, counter=counter, max_image_pixels=max_image_pixels
    )
    batch_transform = MultiCropBatchTransform(
        transform, image_column_name, label_column_name=label_column_name, counter=counter,
        max_image_pixels=max_image_pixels,
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


def load_digits_dataset(image_size: int = 32, seed: int = 0, test_fraction: float = 0.2) -> datasets.DatasetDict:
    """
    The built-in dataset: scikit-learn's 1,797 handwritten digits (8x8, 0..16 grey levels) as RGB images, for demos,
    tests and linear probes without a network.

    Values are scaled from 0..16 to 0..255, then upsampled to `image_size` with bicubic interpolation. The split is
    stratified by class and fixed by `seed`.

    Args:
        image_size (`int`, defaults to 32): side of the images.
        seed (`int`, defaults to 0): seed of the train/test split.
        test_fraction (`float`, defaults to 0.2): fraction of the images in the "test" split.

    Returns:
        `datasets.DatasetDict`: "train" and "test" splits with columns "image" (`datasets.Image`) and "label"
        (`datasets.ClassLabel` with names "0" to "9").
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if image_size < 1:
        raise ValueError(f"`image_size` must be positive, got {image_size}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    indices = np.arange(len(labels))
    train_indices, test_indices = train_test_split(
        indices, test_size=test_fraction, random_state=seed, stratify=labels
    )
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(digit) for digit in range(10)])}
    )

    def build(split_indices: np.ndarray) -> datasets.Dataset:
        images = [
            PIL.Image.fromarray(pixels[index])
            .resize((image_size, image_size), PIL.Image.Resampling.BICUBIC)
            .convert("RGB")
            for index in split_indices
        ]
        return datasets.Dataset.from_dict(
            {"image": images, "label": labels[split_indices].tolist()}, features=features
        )

    return datasets.DatasetDict({"train": build(train_indices), "test": build(test_indices)})


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


def sample_examples(dataset: datasets.Dataset, num_examples: int | None) -> datasets.Dataset:
    """At most `num_examples` rows of a map-style dataset, drawn with the constant seed `VALIDATION_VIEW_SEED` (the
    same rows in every run; not the first rows, which may all be of one class); all of it when `num_examples` is
    `None` or not smaller."""
    if num_examples is None or num_examples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=VALIDATION_VIEW_SEED).select(range(num_examples)).flatten_indices()
# The photographs of the built-in photos dataset, as (package, file inside the package, class name). All ship inside
# the wheels of scikit-image (`skimage/data`; only files of the wheel itself, never the ones `skimage.data` fetches on
# first use), scikit-learn and matplotlib: nothing is downloaded. Eleven are colour photographs; the last six are grey
# photographs (textures of brick, grass and gravel among them), read as RGB.
BUILTIN_PHOTOS = (
    ("skimage.data", "astronaut.png", "astronaut"),
    ("skimage.data", "chelsea.png", "chelsea"),
    ("skimage.data", "coffee.png", "coffee"),
    ("skimage.data", "hubble_deep_field.jpg", "hubble_deep_field"),
    ("skimage.data", "ihc.png", "ihc"),
    ("skimage.data", "motorcycle_left.png", "motorcycle"),
    ("skimage.data", "retina.jpg", "retina"),
    ("skimage.data", "rocket.jpg", "rocket"),
    ("sklearn.datasets", "images/china.jpg", "china"),
    ("sklearn.datasets", "images/flower.jpg", "flower"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "grace_hopper"),
    ("skimage.data", "brick.png", "brick"),
    ("skimage.data", "grass.png", "grass"),
    ("skimage.data", "gravel.png", "gravel"),
    ("skimage.data", "camera.png", "camera"),
    ("skimage.data", "coins.png", "coins"),
    ("skimage.data", "moon.png", "moon"),
)


def _read_packaged_photo(package: str, filename: str) -> PIL.Image.Image:
    """Reads one photograph that ships inside an installed package, as RGB."""
    import importlib.resources

    try:
        resource = importlib.resources.files(package).joinpath(filename)
        data = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        distribution = {"skimage.data": "scikit-image", "sklearn.datasets": "scikit-learn"}.get(package, package)
        raise FileNotFoundError(
            f"The built-in photos need {filename!r} from the {package!r} package, which is not installed or lacks "
            f"it ({error}). Install it with `pip install {distribution}`, or use `--builtin_dataset digits`."
        ) from error
    return to_rgb_image(decode_image(data))


def _photo_crop(
    cell: tuple[int, int, int, int], rng: np.random.Generator, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """A random crop box `(left, top, right, bottom)` inside `cell` (a box of the photo): area a uniform fraction in
    `scale` of the cell's, aspect ratio log-uniform in [3/4, 4/3], position uniform (shrunk to fit if needed)."""
    cell_left, cell_top, cell_right, cell_bottom = cell
    width, height = cell_right - cell_left, cell_bottom - cell_top
    area = rng.uniform(*scale) * width * height
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_width = min(width, max(1, round(math.sqrt(area * ratio))))
    crop_height = min(height, max(1, round(math.sqrt(area / ratio))))
    left = cell_left + int(rng.integers(0, width - crop_width + 1))
    top = cell_top + int(rng.integers(0, height - crop_height + 1))
    return left, top, left + crop_width, top + crop_height


def load_photos_dataset(
    image_size: int = 64,
    train_crops_per_photo: int = 64,
    test_crops_per_photo: int = 32,
    grid_size: int = 4,
    test_cells_per_photo: int = 4,
    crop_scale: tuple[float, float] = (0.25, 1.0),
    seed: int = 0,
) -> datasets.DatasetDict:
    """
    The built-in photos dataset: crops of the 17 real photographs listed in `BUILTIN_PHOTOS` (astronaut, cat, coffee,
    deep field, tissue, motorcycle, retina, rocket, palace, flower, portrait, and grey brick, grass, gravel, camera
    man, coins, moon), which ship inside scikit-image, scikit-learn and matplotlib, so it loads with no network.

    The labelled task is *which photograph a crop comes from*, on held-out parts of the photographs. Each photo is
    cut into a `grid_size` x `grid_size` grid of cells; `test_cells_per_photo` cells of each photo (drawn with
    `seed`) are held out for the "test" split, the other cells give the "train" split, so no test crop shares a
    pixel with a training crop. Every crop is a fixed, seeded random box inside one cell of its split (cell drawn
    uniformly; the box's area a uniform fraction in `crop_scale` of the cell's, aspect ratio in [3/4, 4/3]),
    resized to `image_size` x `image_size` (bicubic).

    Args:
        image_size (`int`, defaults to 64): side of the crops, in pixels.
        train_crops_per_photo (`int`, defaults to 64): crops of each photo in the "train" split.
        test_crops_per_photo (`int`, defaults to 32): crops of each photo in the "test" split.
        grid_size (`int`, defaults to 4): cells per side of a photo's grid.
        test_cells_per_photo (`int`, defaults to 4): cells of each photo held out for the "test" split.
        crop_scale (`tuple[float, float]`, defaults to `(0.25, 1.0)`): range of a crop's area, as a fraction of its
            cell's.
        seed (`int`, defaults to 0): seed of the held-out cells and of the crops.

    Returns:
        `datasets.DatasetDict`: "train" and "test" splits with columns "image" (`datasets.Image`, RGB) and "label"
        (`datasets.ClassLabel` named after the photographs), in a seeded random order.

    Raises:
        `FileNotFoundError`: when a package that ships the photographs is missing (the message names it).
    """
    if image_size < 1:
        raise ValueError(f"`image_size` must be positive, got {image_size}.")
    if min(train_crops_per_photo, test_crops_per_photo) < 1:
        raise ValueError(
            f"Crops per photo must be positive, got {train_crops_per_photo} (train) and {test_crops_per_photo} (test)."
        )
    if not 0 < test_cells_per_photo < grid_size**2:
        raise ValueError(
            f"`test_cells_per_photo` must be between 1 and {grid_size**2 - 1} (grid_size**2 - 1), got "
            f"{test_cells_per_photo}."
        )
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"`crop_scale` must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}.")
    photos = [_read_packaged_photo(package, filename) for package, filename, _ in BUILTIN_PHOTOS]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[name for _, _, name in BUILTIN_PHOTOS])}
    )
    cells_rng = np.random.default_rng([seed, 0])
    split_cells: dict[str, list[list[tuple[int, int, int, int]]]] = {"train": [], "test": []}
    for photo in photos:
        width, height = photo.size
        xs = np.linspace(0, width, grid_size + 1).round().astype(int)
        ys = np.linspace(0, height, grid_size + 1).round().astype(int)
        cells = [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(grid_size) for i in range(grid_size)]
        held_out = set(cells_rng.choice(len(cells), size=test_cells_per_photo, replace=False).tolist())
        split_cells["test"].append([cell for index, cell in enumerate(cells) if index in held_out])
        split_cells["train"].append([cell for index, cell in enumerate(cells) if index not in held_out])

    def build(split: str, stream: int, crops_per_photo: int) -> datasets.Dataset:
        rng = np.random.default_rng([seed, stream])
        images, labels = [], []
        for label, (photo, cells) in enumerate(zip(photos, split_cells[split])):
            for _ in range(crops_per_photo):
                cell = cells[int(rng.integers(len(cells)))]
                box = _photo_crop(cell, rng, crop_scale)
                images.append(photo.resize((image_size, image_size), PIL.Image.Resampling.BICUBIC, box=box))
                labels.append(label)
        order = rng.permutation(len(images))  # photos mixed, so that the first rows are a fair subset
        return datasets.Dataset.from_dict(
            {"image": [images[i] for i in order], "label": [labels[i] for i in order]}, features=features
        )

    return datasets.DatasetDict(
        {"train": build("train", 1, train_crops_per_photo), "test": build("test", 2, test_crops_per_photo)}
    )


@dataclass(frozen=True)
class BuiltinDataset:
    """A labelled image dataset that ships inside installed packages: its loader, the side of its images, its name."""

    load: Callable[..., datasets.DatasetDict]
    image_size: int
    description: str


# The built-in datasets, by the name that `--builtin_dataset` takes.
BUILTIN_DATASETS = {
    "photos": BuiltinDataset(load_photos_dataset, 64, "built-in photos (crops of 17 photographs, held-out cells)"),
    "digits": BuiltinDataset(load_digits_dataset, 32, "scikit-learn digits (8x8, upsampled)"),
}


def load_builtin_dataset(name: str, image_size: int | None = None, seed: int = 0) -> datasets.DatasetDict:
    """
    One of `BUILTIN_DATASETS` ("photos", the default of the scripts, or "digits"), with "train" and "test" splits of
    labelled RGB images, built offline and deterministically from `seed`.

    Args:
        name (`str`): `"photos"` (`load_photos_dataset`) or `"digits"` (`load_digits_dataset`).
        image_size (`int`, *optional*): side of the images; defaults to the dataset's own (64 and 32).
        seed (`int`, defaults to 0): seed of the crops or of the split.
    """
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"Unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}.")
    builtin = BUILTIN_DATASETS[name]
    return builtin.load(image_size=image_size or builtin.image_size, seed=seed)


__all__ = [
    "BUILTIN_DATASETS",
    "BadSampleCounter",
    "FixedViewBatchTransform",
    "DecodeResizeTransform",
    "ImageDecodeError",
    "MultiCropBatchTransform",
    "MultiCropCollator",
    "MultiCropConfig",
    "MultiCropTransform",
    "check_num_shards",
    "decode_image",
    "detect_image_column",
    "detect_label_column",
    "load_builtin_dataset",
    "load_digits_dataset",
    "load_photos_dataset",
    "load_pretraining_dataset",
    "prepare_pretraining_dataset",
    "prepare_validation_dataset",
    "sample_examples",
    "split_validation_dataset",
    "take_validation_examples",
    "to_rgb_image",
]
