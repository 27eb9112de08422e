"""
Robust decoding: any image value a dataset holds (encoded bytes, a path or URL, a decoded image, an array) to one
RGB PIL image, or an `ImageDecodeError` that says why not, so that a bad file costs one sample and not the run.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)


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
    data, path = _encoded_source(value)
    where = f" ({path})" if path else ""
    image = _load_encoded(data, path, max_image_pixels, min_pixels, where)
    try:
        if image.getexif().get(PIL.Image.ExifTags.Base.Orientation, 1) != 1:
            image = PIL.ImageOps.exif_transpose(image)
    except Exception as error:  # a broken EXIF block should not cost the image
        logger.debug(f"Ignoring unreadable EXIF data{where}: {error}")
    return image


def read_jpeg_for_device(
    value: Any, max_image_pixels: int | None = None, max_pixels: int | None = None
) -> np.ndarray | None:
    """
    The encoded bytes of a JPEG to be decoded on the training device (`decode_on_device`), after the checks that
    need only its header: the size (the decompression-bomb limit of `decode_image`), the format and the colour mode.
    Reading the header costs about 0.05 ms; the pixels are not decoded.

    Args:
        value: an undecoded image value, as for `decode_image`.
        max_image_pixels (`int`, *optional*): as for `decode_image`.
        max_pixels (`int`, *optional*): JPEGs with more pixels are left to the CPU, which decodes them at reduced
            size (`decode_image(min_pixels=...)`) instead of sending all their pixels to the device.

    Returns:
        `np.ndarray` of `uint8` (the file's bytes, writable), or `None` for an image to decode on the CPU with
        `decode_image`: not a JPEG, a header PIL cannot read (`decode_image` then says why), a mode other than RGB
        and grayscale (CMYK, ...), an EXIF orientation other than upright, or more than `max_pixels` pixels.

    Raises:
        `ImageDecodeError`: for a missing or empty file, or an image over `max_image_pixels`, as `decode_image`.
    """
    if max_image_pixels is None:
        max_image_pixels = PIL.Image.MAX_IMAGE_PIXELS
    if isinstance(value, (PIL.Image.Image, np.ndarray, torch.Tensor)):
        return None  # an image that is already decoded
    data, path = _encoded_source(value)
    where = f" ({path})" if path else ""
    try:
        data = _encoded_bytes(data, path, where)
    except ImageDecodeError:
        raise
    except Exception:  # an unreadable file: `decode_image` names the problem
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
            format, mode, size = image.format, image.mode, image.size
            upright = image.getexif().get(PIL.Image.ExifTags.Base.Orientation, 1) == 1
    except Exception:  # unreadable or a bomb by PIL's own limit: `decode_image` names the problem
        return None
    _check_size(size, max_image_pixels, where)
    if format != "JPEG" or mode not in ("RGB", "L") or not upright:
        return None
    if max_pixels is not None and size[0] * size[1] > max_pixels:
        return None
    return np.frombuffer(data, dtype=np.uint8).copy()


def _encoded_source(value: Any) -> tuple[bytes | bytearray | memoryview | None, str | Path | None]:
    """The encoded bytes and the path of an undecoded image value (see `decode_image`), either of which may be
    `None`, but not both."""
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
    return data, path


def _load_encoded(
    data: bytes | bytearray | memoryview | None,
    path: str | Path | None,
    max_image_pixels: int | None,
    min_pixels: int | None,
    where: str,
) -> PIL.Image.Image:
    """Reads `data` (or, when it is `None`, the file at `path`) and decodes all its pixels, checking the size first;
    every failure becomes an `ImageDecodeError` (`where` names the file in its message)."""
    try:
        data = _encoded_bytes(data, path, where)
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
    except Exception as error:  # PIL raises many exception types (OSError, SyntaxError, ValueError, ...) on bad data
        raise ImageDecodeError(f"Cannot decode the image{where}: {type(error).__name__}: {error}") from error
    return image


def _encoded_bytes(data: bytes | bytearray | memoryview | None, path: str | Path | None, where: str) -> bytes:
    """`data`, or the file at `path` when `data` is `None`; a missing or empty file is an `ImageDecodeError`."""
    if data is None:
        try:
            data = _read_bytes(str(path))
        except FileNotFoundError as error:
            raise ImageDecodeError(f"Image file not found{where}.", kind="missing") from error
    if len(data) == 0:
        raise ImageDecodeError(f"The image file is empty{where}.", kind="empty")
    return data


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

