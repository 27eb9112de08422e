"""
Images that are not 8-bit RGB (16-bit grayscale PNG and TIFF, CT values, multi-band TIFF/GeoTIFF tiles, numpy
arrays) read as float arrays that keep their values and channels, and what a run learns about its images from a
sample of them before training (`inspect_images`).

A run is in one of two pixel formats, decided once from that sample:

- `"rgb"`: every sampled image is 8-bit with 1 or 3 channels (JPEG, 8-bit PNG and TIFF, ..., `uint8` numpy arrays).
  The images are turned into 8-bit RGB (`to_rgb_image`), get the colour augmentations and ImageNet's normalisation:
  the default path, unchanged.
- `"float"`: anything else. Each image is read by `read_image_array` to `(C, H, W)` in its own dtype (TIFFs with
  `tifffile`, which reads multi-band tiles whole; other files with PIL, `.npy` files with `numpy`), then multiplied
  by the run's `rescale_factor`: integers divided by their dtype's maximum (65535 for `uint16`, 32767 for `int16`,
  so negative CT values stay negative) or by `--max_pixel_value`, floats kept. Nothing is clipped or cast to 8 bits.
  The number of channels, the dtype and the per-channel mean and standard deviation come from the sample; every
  sampled image must agree with the first one (the error names the first that does not). Later images that do not
  fit the run's channels are skipped and counted as bad samples (kind `"channels"`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers.utils import logging

from .decoding import (
    ImageDecodeError,
    _check_size,
    _encoded_bytes,
    _encoded_source,
    _load_encoded,
    to_rgb_image,
)

logger = logging.get_logger(__name__)

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
NPY_MAGIC = b"\x93NUMPY"
# PIL modes that hold more than 8 bits per sample: read with their values, never through 8-bit RGB.
_HIGH_BIT_DEPTH_MODES = ("I", "F")


@dataclass(frozen=True)
class ImageFormat:
    """
    What a run knows of its images before training (`inspect_images`).

    Attributes:
        pixel_format (`str`): `"rgb"` (8-bit images, the RGB path) or `"float"` (values kept, any channel count).
        num_channels (`int`): channels of every image (3 on the RGB path).
        dtype (`str`): the dtype of the sampled images (`"uint8"` on the RGB path).
        rescale_factor (`float`): what the raw values are multiplied by (`1 / 255` on the RGB path).
        image_mean (`tuple[float, ...]`, *optional*): per-channel mean of the rescaled values (`"float"` only).
        image_std (`tuple[float, ...]`, *optional*): per-channel standard deviation of the rescaled values.
        num_images (`int`): images sampled.
        first_image (`str`): the first sampled image, as named in errors.
    """

    pixel_format: str
    num_channels: int
    dtype: str
    rescale_factor: float
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    num_images: int = 0
    first_image: str = ""

    def image_processor(self, image_size: int) -> Any:
        """The `ViTImageProcessor` that prepares this data for the model: resize to `image_size`, rescale by
        `rescale_factor`, normalise with the per-channel mean and std, never convert to RGB (`do_convert_rgb=False`,
        which also tells `extract_embeddings` to read images with their values). It takes `(C, H, W)` or
        `(H, W, C)` arrays of any channel count (pass `input_data_format`) and reloads with `AutoImageProcessor`
        without this project.
        Only for `"float"` data (the RGB path keeps ImageNet's processor)."""
        from transformers import ViTImageProcessor

        if self.pixel_format != "float" or self.image_mean is None or self.image_std is None:
            raise ValueError("Only float data with a mean and std has its own image processor.")
        return ViTImageProcessor(
            do_resize=True,
            size={"height": image_size, "width": image_size},
            do_rescale=self.rescale_factor != 1.0,
            rescale_factor=self.rescale_factor,
            do_normalize=True,
            image_mean=list(self.image_mean),
            image_std=list(self.image_std),
            do_convert_rgb=False,
        )


def dtype_rescale_factor(dtype: np.dtype, max_pixel_value: float | None = None) -> float:
    """`1 / max_pixel_value` when given, else `1 / max` of an integer `dtype` (`1 / 65535` for `uint16`, `1 / 32767`
    for `int16`), else 1 (floats and booleans keep their values)."""
    if max_pixel_value is not None:
        if max_pixel_value <= 0:
            raise ValueError(f"`max_pixel_value` must be positive, got {max_pixel_value}.")
        return 1.0 / float(max_pixel_value)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        return 1.0 / float(np.iinfo(dtype).max)
    return 1.0


def channels_first(array: np.ndarray, num_channels: int | None = None, where: str = "") -> np.ndarray:
    """
    `array` as `(C, H, W)`: `(H, W)` gains a channel axis; for `(A, B, D)`, the channel axis is the one of size
    `num_channels` when given (the last one when both ends have that size, as `tifffile` and PIL lay images out),
    else the shorter of the first and the last.

    Raises:
        `ImageDecodeError` (kind `"channels"`): when no axis has `num_channels` entries, the layout is ambiguous
        (first and last axes of the same size, no `num_channels`), or the array is not 2-D or 3-D.
    """
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ImageDecodeError(
            f"Cannot read an image from an array of shape {tuple(array.shape)}{where}; expected (H, W), (H, W, C) or "
            "(C, H, W).",
            kind="channels",
        )
    first, last = array.shape[0], array.shape[-1]
    if num_channels is not None:
        if last == num_channels:
            return np.moveaxis(array, -1, 0)
        if first == num_channels:
            return array
        raise ImageDecodeError(
            f"The image{where} has shape {tuple(array.shape)}, with no axis of {num_channels} channels as the run's "
            "images have: give every image the same channels, or leave this one out.",
            kind="channels",
        )
    if first == last:
        raise ImageDecodeError(
            f"Cannot tell whether the array of shape {tuple(array.shape)}{where} is (H, W, C) or (C, H, W): pass "
            "`--num_channels`.",
            kind="channels",
        )
    return np.moveaxis(array, -1, 0) if last < first else array


def _read_tiff(data: bytes, where: str) -> np.ndarray:
    try:
        import tifffile
    except ImportError as error:
        raise ImportError(
            "TIFF images are read with tifffile, which keeps every band and bit: `pip install 'lejepa-hf[tiff]'` "
            "(or `pip install tifffile`)."
        ) from error
    try:
        return tifffile.imread(io.BytesIO(data))
    except Exception as error:  # tifffile raises many types on bad data
        raise ImageDecodeError(f"Cannot decode the TIFF image{where}: {type(error).__name__}: {error}") from error


def _read_encoded(data: bytes, where: str, max_image_pixels: int | None) -> np.ndarray:
    """The pixels of an encoded file: `(H, W)`, `(H, W, C)` or, for `.npy` files, any layout `channels_first` reads."""
    if data.startswith(NPY_MAGIC):
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as error:
            raise ImageDecodeError(f"Cannot read the .npy array{where}: {type(error).__name__}: {error}") from error
    if data[:4] in TIFF_MAGIC:
        return _read_tiff(data, where)
    image = _load_encoded(data, None, max_image_pixels, None, where)
    if image.mode in _HIGH_BIT_DEPTH_MODES or image.mode.startswith("I;"):
        return np.asarray(image)
    if image.mode == "L":
        return np.asarray(image)
    return np.asarray(to_rgb_image(image))


def read_image_array(
    value: Any,
    num_channels: int | None = None,
    max_image_pixels: int | None = None,
    dtype: str | np.dtype | None = None,
) -> np.ndarray:
    """
    Reads one image of any bit depth and channel count to a `(C, H, W)` array of its own dtype, its values kept.

    Args:
        value: an undecoded image value (`{"bytes", "path"}`, bytes, a path, as for `decode_image`: TIFF files are
            read with `tifffile`, `.npy` files with `numpy.load`, others with PIL), or an array (numpy, a tensor, or
            the nested lists of a `datasets` `Array3D` column).
        num_channels (`int`, *optional*): the run's channels, which decide the layout (see `channels_first`).
        max_image_pixels (`int`, *optional*): larger images are rejected (see `decode_image`).
        dtype (*optional*): the dtype of nested lists (a `datasets` array feature's `dtype`).

    Raises:
        `ImageDecodeError`: for anything that is not such an image (`kind="channels"` for a layout or channel count
        that does not fit).
    """
    if max_image_pixels is None:
        max_image_pixels = PIL.Image.MAX_IMAGE_PIXELS
    where = ""
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().numpy()
    elif isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, (list, tuple)):
        array = np.asarray(value, dtype=dtype)
    elif isinstance(value, PIL.Image.Image):
        array = np.asarray(value)
    else:
        data, path = _encoded_source(value)
        where = f" ({path})" if path else ""
        array = _read_encoded(_encoded_bytes(data, path, where), where, max_image_pixels)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
            or array.dtype == np.bool_):
        raise ImageDecodeError(f"Cannot read an image from an array of dtype {array.dtype}{where}.", kind="wrong type")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ImageDecodeError(f"The image{where} has NaN or infinite values.", kind="not finite")
    array = channels_first(array, num_channels, where)
    _check_size((array.shape[2], array.shape[1]), max_image_pixels, where)
    return array


def _is_rgb8(value: Any) -> bool:
    """Whether an image value takes the 8-bit RGB path: an 8-bit file of 1 or 3 channels (a TIFF checked with
    `tifffile`, as Pillow misreads multi-band ones), or a `uint8` numpy array or tensor of 1 or 3 channels. Arrays
    of a `datasets` column (nested lists) and `.npy` files always keep their values."""
    if isinstance(value, (list, tuple)):
        return False
    if isinstance(value, (np.ndarray, torch.Tensor)):
        shape = tuple(value.shape)
        eight_bit = value.dtype in (np.uint8, torch.uint8)
        return eight_bit and (len(shape) == 2 or (len(shape) == 3 and 3 in (shape[0], shape[-1])))
    if isinstance(value, PIL.Image.Image):
        return not (value.mode in _HIGH_BIT_DEPTH_MODES or value.mode.startswith("I;"))
    data, path = _encoded_source(value)
    data = _encoded_bytes(data, path, f" ({path})" if path else "")
    if data.startswith(NPY_MAGIC):
        return False
    if data[:4] in TIFF_MAGIC:
        try:
            import tifffile  # noqa: F401
        except ImportError:  # a single-page 8-bit RGB or grayscale TIFF is Pillow's; anything else needs tifffile
            if _pillow_reads_as_rgb8(data):
                return True
        return _is_rgb8(_read_tiff(data, f" ({path})" if path else ""))
    try:
        mode = PIL.Image.open(io.BytesIO(data)).mode
    except Exception:
        return True  # unreadable: the RGB path skips and counts it
    return not (mode in _HIGH_BIT_DEPTH_MODES or mode.startswith("I;"))


def _pillow_reads_as_rgb8(data: bytes) -> bool:
    try:
        image = PIL.Image.open(io.BytesIO(data))
        return image.mode in ("RGB", "L") and getattr(image, "n_frames", 1) == 1
    except Exception:
        return False


def _describe(value: Any, index: int) -> str:
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return str(path) if path else f"row {index}"


def inspect_images(
    values: Sequence[Any],
    num_channels: int | None = None,
    max_pixel_value: float | None = None,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    dtype: str | None = None,
) -> ImageFormat:
    """
    Decides a run's pixel format from a sample of its undecoded image values (see the module docstring), and for
    `"float"` data its channels, dtype, rescale factor and per-channel mean and standard deviation (of the rescaled
    values over every pixel of the sample, in float64), unless `image_mean` and `image_std` are given.

    Args:
        values (`Sequence`): the sampled image values, in a fixed order (the first one is the reference).
        num_channels (`int`, *optional*): the channels the user asked for (`--num_channels`); anything but 3 makes
            the data `"float"`, and every image must have them.
        max_pixel_value (`float`, *optional*): integer values are divided by it instead of their dtype's maximum.
        image_mean, image_std (`Sequence[float]`, *optional*): per-channel statistics given by the user.
        dtype (`str`, *optional*): the dtype of values given as nested lists (a `datasets` array feature's).

    Raises:
        `ValueError`: naming the first image whose channels or dtype differ from the first image's, or when no
            sampled image can be read.
    """
    if (image_mean is None) != (image_std is None):
        raise ValueError("Give both `--image_mean` and `--image_std`, or neither (both are then estimated).")
    values = list(values)
    rgb = [_safe_is_rgb8(value) for value in values]
    if (num_channels is None or num_channels == 3) and all(rgb) and max_pixel_value is None and image_mean is None:
        first = _describe(values[0], 0) if values else ""
        return ImageFormat("rgb", 3, "uint8", 1 / 255, num_images=len(values), first_image=first)
    reference: tuple[str, np.ndarray] | None = None
    sums = squares = None
    count = 0
    for index, value in enumerate(values):
        name = _describe(value, index)
        try:
            array = read_image_array(value, num_channels if num_channels is not None else (
                reference[1].shape[0] if reference is not None else None), dtype=dtype)
        except ImageDecodeError as error:
            if reference is not None and error.kind == "channels":
                raise ValueError(
                    f"Image {name} does not fit the {reference[1].shape[0]} channels of {reference[0]} (the first "
                    f"sampled image): {error}"
                ) from error
            logger.warning(f"Skipping {name} while inspecting the data: {error}")
            continue
        if reference is None:
            reference = (name, array)
        elif array.dtype != reference[1].dtype and max_pixel_value is None:
            raise ValueError(
                f"Image {name} is {array.dtype} but {reference[0]} (the first sampled image) is "
                f"{reference[1].dtype}: their values would be scaled differently. Convert them to one dtype, or pass "
                "`--max_pixel_value` to scale every image by the same number."
            )
        if image_mean is None:
            pixels = array.reshape(array.shape[0], -1).astype(np.float64)
            sums = pixels.sum(axis=1) if sums is None else sums + pixels.sum(axis=1)
            squares = (pixels**2).sum(axis=1) if squares is None else squares + (pixels**2).sum(axis=1)
            count += pixels.shape[1]
    if reference is None:
        raise ValueError(f"None of the {len(values)} sampled images could be read; see the warnings above.")
    channels = reference[1].shape[0]
    factor = dtype_rescale_factor(reference[1].dtype, max_pixel_value)
    if image_mean is None:
        mean = sums / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        if (std == 0).any():
            logger.warning(f"Channels {np.flatnonzero(std == 0).tolist()} are constant in the sample: std set to 1.")
            std = np.where(std == 0, 1.0 / factor, std)
        image_mean, image_std = tuple(float(v) * factor for v in mean), tuple(float(v) * factor for v in std)
    if len(image_mean) != channels or len(image_std) != channels:
        raise ValueError(
            f"`--image_mean` and `--image_std` need one value per channel: the images have {channels}, got "
            f"{len(image_mean)} and {len(image_std)}."
        )
    return ImageFormat(
        "float", channels, str(reference[1].dtype), factor, tuple(float(v) for v in image_mean),
        tuple(float(v) for v in image_std), num_images=len(values), first_image=reference[0],
    )


def _safe_is_rgb8(value: Any) -> bool:
    try:
        return _is_rgb8(value)
    except ImageDecodeError:
        return True  # a bad sample: it does not decide the format


def resize_array(array: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A float image `(C, H, W)` resized to `size` `(height, width)` (bilinear, antialiased, as PIL and the image
    processor do), any channel count."""
    if tuple(array.shape[-2:]) == tuple(size):
        return array
    return torch.nn.functional.interpolate(array[None], size=size, mode="bilinear", antialias=True)[0]


__all__ = ["ImageFormat", "channels_first", "dtype_rescale_factor", "inspect_images", "read_image_array"]
