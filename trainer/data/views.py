"""
The multi-crop views made in the DataLoader workers: `MultiCropConfig` (every setting of the views),
`MultiCropTransform` (`Vg` global and `Vl` local augmented views of one image, with `torchvision.transforms.v2`) and
`DecodeResizeTransform` (one image resized once, for views made on the device by `device_views.DeviceMultiCrop`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as nn_functional
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tv_functional
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from modeling_lejepa.configuration_lejepa import VIEW_GEOMETRY_FIELDS, LeJepaConfig, check_view_geometry

from .arrays import resize_array
from .decoding import to_rgb_image

_INTERPOLATIONS = {
    "nearest": v2.InterpolationMode.NEAREST,
    "bilinear": v2.InterpolationMode.BILINEAR,
    "bicubic": v2.InterpolationMode.BICUBIC,
}


def channel_jitter(views: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """
    The per-channel brightness and contrast jitter of data that is not RGB (`MultiCropConfig.channel_jitter_prob`):
    channel `c` of each view becomes `(x_c - m_c) * k_c + m_c * b_c`, `m_c` its mean over the view, unclipped.

    Args:
        views (`torch.Tensor` of shape `(n, C, H, W)`).
        factors (`torch.Tensor` of shape `(n, C, 2)`): contrast `k` and brightness `b` factors.
    """
    mean = views.mean(dim=(-2, -1), keepdim=True)  # (n, C, 1, 1)
    contrast, brightness = factors[..., 0, None, None], factors[..., 1, None, None]
    return (views - mean) * contrast + mean * brightness


class _RandomChannelJitter(v2.Transform):
    """`channel_jitter` on one float view `(C, H, W)`, its factors drawn from torch's generator (as every
    `transforms.v2` transform draws)."""

    def __init__(self, contrast: float, brightness: float):
        super().__init__()
        self.strengths = (contrast, brightness)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        channels = flat_inputs[0].shape[-3]
        factors = torch.stack([torch.empty(channels).uniform_(1 - s, 1 + s) for s in self.strengths], dim=1)
        return {"factors": factors}  # (C, 2)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return channel_jitter(inpt[None], params["factors"][None])[0]


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

    The six view-geometry settings (numbers of views, sizes and crop scales) are `LeJepaConfig`'s: their defaults
    are read from it and `check_view_geometry` (in `configuration_lejepa.py`) validates them for both.

    Args:
        num_global_views (`int`, defaults to 2): global views per image, `Vg`.
        num_local_views (`int`, defaults to 6): local views per image, `Vl` (0 for none).
        global_image_size (`int`, defaults to 224): side of the global views.
        local_image_size (`int`, defaults to 96): side of the local views.
        global_crop_scale (`tuple[float, float]`, defaults to `(0.3, 1.0)`): `RandomResizedCrop` area range.
        local_crop_scale (`tuple[float, float]`, defaults to `(0.05, 0.3)`): `RandomResizedCrop` area range.
        crop_ratio (`tuple[float, float]`, defaults to `(3/4, 4/3)`): `RandomResizedCrop` aspect ratio range.
        interpolation (`str`, defaults to `"bilinear"`): `"bilinear"`, `"bicubic"` or `"nearest"` (antialiased
            when downsampling); the views made on the device (`DeviceMultiCrop`) take only `"bilinear"`.
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
        image_mean (`tuple[float, ...]`, defaults to ImageNet's): per-channel mean, on the 0..1 scale (for `"rgb"`,
            1 or 3 values; for `"float"`, one per channel of the data).
        image_std (`tuple[float, ...]`, defaults to ImageNet's): per-channel standard deviation.
        background_color (`tuple[int, int, int]`, defaults to white): colour behind transparent pixels.
        pixel_format (`str`, defaults to `"rgb"`): `"rgb"` for 8-bit images turned into RGB, with every augmentation
            above; `"float"` for images read with their values and channels (`trainer.data.arrays`: 16-bit, CT,
            multi-band), whose views get the crops, flip and blur above and, instead of the colour jitter, grayscale
            and solarization (meaningless beyond RGB), the per-channel jitter below.
        rescale_factor (`float`, defaults to 1.0): `"float"` only: what the raw values are multiplied by (the image
            processor's `rescale_factor`; `1 / 65535` for `uint16`).
        channel_jitter_prob (`float`, defaults to 0.8): `"float"` only: probability that a view gets the per-channel
            jitter: every channel `c` of the view becomes `(x_c - m_c) * k_c + m_c * b_c`, with `m_c` its mean over
            the view, a contrast factor `k_c` uniform in `[1 - channel_contrast, 1 + channel_contrast]` and a
            brightness factor `b_c` uniform in `[1 - channel_brightness, 1 + channel_brightness]`, drawn per view
            and per channel; values are not clipped.
        channel_brightness (`float`, defaults to 0.2): see `channel_jitter_prob`.
        channel_contrast (`float`, defaults to 0.2): see `channel_jitter_prob`.
    """

    num_global_views: int = LeJepaConfig.num_global_views
    num_local_views: int = LeJepaConfig.num_local_views
    global_image_size: int = LeJepaConfig.global_image_size
    local_image_size: int = LeJepaConfig.local_image_size
    global_crop_scale: tuple[float, float] = tuple(LeJepaConfig.global_crop_scale)
    local_crop_scale: tuple[float, float] = tuple(LeJepaConfig.local_crop_scale)
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
    pixel_format: str = "rgb"
    rescale_factor: float = 1.0
    channel_jitter_prob: float = 0.8
    channel_brightness: float = 0.2
    channel_contrast: float = 0.2

    def __post_init__(self):
        for name in ("global_crop_scale", "local_crop_scale", "crop_ratio", "blur_sigma", "background_color"):
            setattr(self, name, tuple(getattr(self, name)))
        for name in ("global_blur_prob", "global_solarize_prob"):
            if not isinstance(getattr(self, name), (int, float)):
                setattr(self, name, tuple(float(p) for p in getattr(self, name)))
        self.image_mean = self._channels("image_mean")
        self.image_std = self._channels("image_std")
        self._check_values()

    def _channels(self, name: str) -> tuple[float, ...]:
        value = getattr(self, name)
        values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
        if self.pixel_format == "float":
            if not values:
                raise ValueError(f"`{name}` needs one value per channel of the data, got {value}.")
            return tuple(values)
        if len(values) == 1:
            values = values * 3
        if len(values) != 3:
            raise ValueError(f"`{name}` needs 1 or 3 values (one per RGB channel), got {value}.")
        return tuple(values)

    @property
    def num_channels(self) -> int:
        """Channels of the views: 3 for `"rgb"`, `len(image_mean)` for `"float"`."""
        return len(self.image_mean)

    def _check_values(self) -> None:
        if self.pixel_format not in ("rgb", "float"):
            raise ValueError(f"`pixel_format` must be 'rgb' or 'float', got {self.pixel_format!r}.")
        if len(self.image_std) != len(self.image_mean):
            raise ValueError(
                f"`image_mean` and `image_std` need the same number of values, got {self.image_mean} and "
                f"{self.image_std}."
            )
        if not self.rescale_factor > 0:
            raise ValueError(f"`rescale_factor` must be positive, got {self.rescale_factor}.")
        for name in ("channel_brightness", "channel_contrast"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)}.")
        check_view_geometry(**{name: getattr(self, name) for name in VIEW_GEOMETRY_FIELDS})
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"`crop_ratio` must be (min, max) with 0 < min <= max, got {self.crop_ratio}.")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"`interpolation` must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}.")
        probabilities = {
            name: getattr(self, name)
            for name in ("horizontal_flip_prob", "color_jitter_prob", "grayscale_prob", "local_blur_prob",
                         "local_solarize_prob", "channel_jitter_prob")
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
        settings = {name: getattr(config, name) for name in VIEW_GEOMETRY_FIELDS}
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
    upsampled by the crop). The augmentations run on `uint8` tensors with `torchvision.transforms.v2` (for
    `pixel_format="float"`, on the rescaled `float32` values of any channel count: crops, flip, the per-channel jitter
    and blur); the last step, `ToDtype(float32, scale=True)` followed by `Normalize(image_mean, image_std)`, is
    fused: each view is written once into the output tensor and all views are normalised in place together.

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
        # 8-bit RGB: (x / 255 - mean) / std == (x - 255 * mean) / (255 * std); float data is already rescaled
        unit = 255.0 if c.pixel_format == "rgb" else 1.0
        self._shift = torch.tensor(c.image_mean, dtype=torch.float32).view(1, -1, 1, 1) * unit
        self._scale = 1.0 / (torch.tensor(c.image_std, dtype=torch.float32).view(1, -1, 1, 1) * unit)

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
        rgb = c.pixel_format == "rgb"
        if rgb and c.color_jitter_prob > 0 and any((c.brightness, c.contrast, c.saturation, c.hue)):
            jitter = v2.ColorJitter(c.brightness, c.contrast, c.saturation, c.hue)
            steps.append(v2.RandomApply([jitter], p=c.color_jitter_prob))
        if not rgb and c.channel_jitter_prob > 0 and (c.channel_contrast or c.channel_brightness):
            jitter = _RandomChannelJitter(c.channel_contrast, c.channel_brightness)
            steps.append(v2.RandomApply([jitter], p=c.channel_jitter_prob))
        if rgb and c.grayscale_prob > 0:
            steps.append(v2.RandomGrayscale(c.grayscale_prob))
        if blur_prob > 0:
            kernel_size = c.blur_kernel_size or 2 * math.ceil(3 * c.blur_sigma[1]) + 1
            kernel_size = min(kernel_size, 2 * size - 1)  # reflect padding needs the half kernel inside the view
            steps.append(v2.RandomApply([_SeparableGaussianBlur(kernel_size, c.blur_sigma)], p=blur_prob))
        if rgb and solarize_prob > 0:
            steps.append(v2.RandomSolarize(threshold=c.solarize_threshold, p=solarize_prob))
        return v2.Compose(steps)

    def _render(self, image: torch.Tensor, pipelines: Sequence[v2.Compose], size: int) -> torch.Tensor:
        views = torch.empty((len(pipelines), image.shape[-3], size, size), dtype=torch.float32)
        for index, pipeline in enumerate(pipelines):
            views[index].copy_(pipeline(image))
        return views.sub_(self._shift).mul_(self._scale)

    def __call__(self, image: PIL.Image.Image | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            image (`PIL.Image.Image`, `np.ndarray` or `torch.Tensor`): one image, in any mode (see `to_rgb_image`);
                for `pixel_format="float"`, a `(C, H, W)` array of raw values (`read_image_array`).

        Returns:
            `dict[str, torch.Tensor]`: `"pixel_values"` of shape `(Vg, C, H, W)` and, when `Vl > 0`,
            `"local_pixel_values"` of shape `(Vl, C, h, w)`, both `float32` and normalised.
        """
        c = self.config
        if c.pixel_format == "float":  # (C, H, W) values from `read_image_array`, rescaled
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).mul_(c.rescale_factor)
        else:
            pixels = tv_functional.pil_to_tensor(to_rgb_image(image, c.background_color))
        output = {"pixel_values": self._render(pixels, self.global_views, c.global_image_size)}
        if c.num_local_views > 0:
            output["local_pixel_values"] = self._render(
                pixels, [self.local_view] * c.num_local_views, c.local_image_size
            )
        return output

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


# With `decode_on_device`, JPEGs of up to this many times `DecodeResizeTransform.target_pixels` are decoded on the
# device (3.0 MP for the default views, which holds 1024 x 768 and 1920 x 1080 photos at 2 x 224 + 6 x 96).
DEVICE_DECODE_MAX_FACTOR = 16


class DecodeResizeTransform:
    """
    The DataLoader workers' part of `augment_on_device`: one image, resized once to a bounded size, as `uint8`. The
    views are then cut and augmented on the training device (`trainer.data.device_views.DeviceMultiCrop`).

    The size keeps enough pixels for the largest view: with `target_pixels = max(S^2 / min_scale)` over the global and
    local views (`S` the view side, `min_scale` the smallest crop area fraction; 184,320 pixels for 2 x 224 px at
    scale 0.3 and 6 x 96 px at 0.05), the smallest crop still has about `S x S` pixels. `MultiCropBatchTransform`
    decodes JPEGs at reduced size down to `target_pixels` (`decode_image(min_pixels=...)`, libjpeg's DCT scaling);
    an image left with more than `2 * target_pixels` pixels, or a long side above `4 * sqrt(target_pixels)`, is then
    resized (bilinear, antialiased) down to `target_pixels`, keeping its aspect ratio. Smaller images are never
    upsampled. Crops are then drawn from each image's whole extent, as on the CPU path.

    With `decode_on_device`, a JPEG of at most `DEVICE_DECODE_MAX_FACTOR * target_pixels` pixels (RGB or grayscale,
    upright) is not decoded here: the row carries its bytes under `"jpeg_bytes"` (`read_jpeg_for_device`), and
    `LeJepaTrainer` decodes the JPEGs of a batch on the training device (`decode_jpegs`, torchcodec: nvJPEG on CUDA)
    and resizes them there (`resize_on_device`, the same bounded size). Other images are decoded here as above.

    Args:
        config (`MultiCropConfig`, *optional*): the view settings (`MultiCropConfig()` by default); only the sizes,
            crop scales and `background_color` are used here.
        target_pixels (`int`, *optional*): overrides the pixel target above.
        decode_on_device (`bool`, *optional*, defaults to `False`): leave JPEGs to the training device, as above.

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

    def __init__(
        self, config: MultiCropConfig | None = None, target_pixels: int | None = None, decode_on_device: bool = False
    ):
        self.config = config if config is not None else MultiCropConfig()
        if decode_on_device and self.config.pixel_format != "rgb":
            raise ValueError("`decode_on_device` decodes JPEGs: it does not apply to images that are not 8-bit RGB.")
        self.decode_on_device = decode_on_device
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
        # JPEGs decoded on the device at most: larger ones are cheaper decoded at reduced size by the CPU
        self.max_device_pixels = DEVICE_DECODE_MAX_FACTOR * self.target_pixels

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
            `dict[str, torch.Tensor]`: `"images"`, `uint8` of shape `(3, h, w)`; for `pixel_format="float"`, an
            array `(C, h, w)` (from `read_image_array`) multiplied by `rescale_factor`, as `float32`.
        """
        if self.config.pixel_format == "float":
            pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).mul_(self.config.rescale_factor)
            width, height = self.output_size(pixels.shape[-1], pixels.shape[-2])
            return {self.output_key: resize_array(pixels, (height, width))}
        image = to_rgb_image(image, self.config.background_color)
        size = self.output_size(*image.size)
        if size != image.size:
            image = image.resize(size, PIL.Image.Resampling.BILINEAR)
        return {self.output_key: tv_functional.pil_to_tensor(image)}

    def resize_on_device(self, image: torch.Tensor) -> torch.Tensor:
        """A `uint8` image `(3, h, w)` decoded on the device, resized there to `output_size` (bilinear, antialiased,
        as PIL does for the images decoded by the workers) when it is larger."""
        height, width = image.shape[-2:]
        new_width, new_height = self.output_size(width, height)
        if (new_width, new_height) == (width, height):
            return image
        size = (new_height, new_width)
        if image.device.type == "cpu":  # PyTorch's antialiased kernel takes uint8 on the CPU only (4.7x faster)
            return nn_functional.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
        resized = nn_functional.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)
        return resized[0].round_().clamp_(0, 255).to(torch.uint8)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target_pixels={self.target_pixels}, decode_on_device={self.decode_on_device})"

