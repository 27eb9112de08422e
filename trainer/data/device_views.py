"""
Multi-crop views made on the training device, in one batched pass for all images and views.

With `augment_on_device`, DataLoader workers only decode each image and resize it once (`DecodeResizeTransform`);
`MultiCropCollator` pads the `uint8` images of a batch into one canvas `(B, 3, H_max, W_max)` with their true sizes
`(B, 2)`; `LeJepaTrainer` moves the canvas to the device and `DeviceMultiCrop` cuts and augments every view there:

- `RandomResizedCrop` with torchvision's distribution (area fraction uniform in `scale`, log aspect ratio uniform in
  `log(ratio)`, 10 attempts, then the central crop clamped to the ratio range), from each image's own extent, all crops
  of a batch in one `torchvision.ops.roi_align` call (bilinear, averaging `ceil(crop / view)` samples per output pixel
  in each direction, which anti-aliases downscaled crops as torchvision's `antialias=True` does);
- horizontal flip, colour jitter (brightness, contrast, saturation, hue in a random order per view, as torchvision's
  `ColorJitter`), grayscale, Gaussian blur and solarization with the per-view probabilities of `MultiCropConfig`,
  through `kornia.enhance`, `kornia.color` and `kornia.filters`, each applied only to the views that drew it; for
  data that is not 8-bit RGB (`pixel_format="float"`: a `float32` canvas of any channel count, values kept), the crops,
  flip and blur, and a per-channel brightness and contrast jitter (`channel_jitter`) instead of the colour operations;
- normalisation with the image processor's mean and standard deviation.

Every image and view draws its own parameters. They are drawn on the host from a `torch.Generator` seeded from
`(seed, global step, process index, micro-batch)` (`view_generator`), so the views do not depend on the device, differ
between processes, and a resumed run draws the same views as the original one. Only uniform numbers are drawn on the
host; the crop boxes are computed from them and the image sizes where the images are. Host tensors reach a CUDA
device through pinned memory with non-blocking copies, and the index sets of each augmentation are known on the host,
so this code makes no host sync by construction (not yet profiled on a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from kornia.color import rgb_to_grayscale
from kornia.enhance import (
    adjust_brightness_accumulative,
    adjust_contrast_with_mean_subtraction,
    adjust_hue,
    adjust_saturation_with_gray_subtraction,
)
from kornia.filters import gaussian_blur2d
from torchvision.ops import roi_align
from transformers.utils import logging

from .collator import fill_canvas_slot
from .views import DecodeResizeTransform, MultiCropConfig, _per_view, channel_jitter

logger = logging.get_logger(__name__)

# Attempts of torchvision's RandomResizedCrop before it falls back to the central crop.
CROP_ATTEMPTS = 10
# The order of the colour-jitter factors in `ViewParameters.jitter_factors` and `jitter_order`.
JITTER_OPERATIONS = ("brightness", "contrast", "saturation", "hue")


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without a host sync: through pinned memory and a non-blocking copy on CUDA (a copy
    from pageable memory waits for the stream)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def view_generator(seed: int, step: int, process_index: int = 0, micro_step: int = 0) -> torch.Generator:
    """
    A CPU `torch.Generator` for the views of one batch, seeded from `(seed, step, process_index, micro_step)` through
    `numpy.random.SeedSequence` (so that nearby tuples give unrelated streams).

    Args:
        seed (`int`): the run's seed (`TrainingArguments.seed`).
        step (`int`): the global optimizer step.
        process_index (`int`, defaults to 0): the training process, so that processes draw different views.
        micro_step (`int`, defaults to 0): the micro-batch within the step under gradient accumulation.
    """
    state = np.random.SeedSequence([int(seed), int(step), int(process_index), int(micro_step)]).generate_state(2)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


@dataclass
class ViewParameters:
    """
    The random parameters of `n = B * V` views of one kind (global or local), image-major (view `v` of image `b` is
    row `b * V + v`). Everything is on the host; `DeviceMultiCrop.crop_boxes` turns the crop draws into boxes.

    Attributes:
        image_index (`torch.LongTensor` of shape `(n,)`): the image of each view.
        crop_area (`torch.DoubleTensor` of shape `(n, CROP_ATTEMPTS)`): area fraction of each attempt, in `scale`.
        crop_log_ratio (`torch.DoubleTensor` of shape `(n, CROP_ATTEMPTS)`): log aspect ratio (width / height).
        crop_offset (`torch.DoubleTensor` of shape `(n, 2)`): uniform numbers in `[0, 1)` placing the crop (top, left).
        flip (`torch.BoolTensor` of shape `(n,)`): horizontal flip.
        jitter (`torch.BoolTensor` of shape `(n,)`): colour jitter applied.
        jitter_factors (`torch.FloatTensor` of shape `(n, 4)`): brightness, contrast, saturation and hue factors
            (torchvision's conventions; hue as a fraction of the colour circle).
        jitter_order (`torch.LongTensor` of shape `(n, 4)`): a permutation of `JITTER_OPERATIONS` per view.
        grayscale (`torch.BoolTensor` of shape `(n,)`).
        blur (`torch.BoolTensor` of shape `(n,)`).
        blur_sigma (`torch.FloatTensor` of shape `(n,)`): the blur's standard deviation, in pixels of the view.
        solarize (`torch.BoolTensor` of shape `(n,)`).
        channel_jitter (`torch.BoolTensor` of shape `(n,)`): per-channel jitter (`pixel_format="float"` only; the
            colour jitter, grayscale and solarization are then never drawn).
        channel_factors (`torch.FloatTensor` of shape `(n, C, 2)`): contrast and brightness factor of each channel.
    """

    image_index: torch.Tensor
    crop_area: torch.Tensor
    crop_log_ratio: torch.Tensor
    crop_offset: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    jitter_factors: torch.Tensor
    jitter_order: torch.Tensor
    grayscale: torch.Tensor
    blur: torch.Tensor
    blur_sigma: torch.Tensor
    solarize: torch.Tensor
    channel_jitter: torch.Tensor | None = None
    channel_factors: torch.Tensor | None = None


class DeviceMultiCrop:
    """
    The LeJEPA multi-crop augmentation of `MultiCropTransform`, batched on the images' device: `Vg` global and `Vl`
    local views of every image of a padded `uint8` batch, each with its own random parameters (see the module
    docstring for the steps and the libraries doing them).

    Args:
        config (`MultiCropConfig`, *optional*): the settings (view counts and sizes, crop scales and ratio, the
            augmentation probabilities and strengths, mean and std); `MultiCropConfig()` by default.
        kwargs: `MultiCropConfig` fields, when `config` is not given.

    Example:

    ```python
    >>> import torch
    >>> from trainer.data import MultiCropConfig
    >>> from trainer.data.device_views import DeviceMultiCrop, view_generator

    >>> views = DeviceMultiCrop(MultiCropConfig(global_image_size=32, local_image_size=16))
    >>> images = torch.randint(0, 256, (3, 3, 50, 60), dtype=torch.uint8)  # padded canvas of 3 images
    >>> sizes = torch.tensor([[50, 60], [40, 30], [50, 20]])  # true (height, width) of each
    >>> batch = views(images, sizes, view_generator(seed=0, step=0))
    >>> batch["pixel_values"].shape, batch["local_pixel_values"].shape
    (torch.Size([3, 2, 3, 32, 32]), torch.Size([3, 6, 3, 16, 16]))
    ```
    """

    def __init__(self, config: MultiCropConfig | None = None, **kwargs):
        self.config = MultiCropConfig.given(config, kwargs)
        c = self.config
        self._jitter_ranges = [
            (max(0.0, 1.0 - c.brightness), 1.0 + c.brightness),
            (max(0.0, 1.0 - c.contrast), 1.0 + c.contrast),
            (max(0.0, 1.0 - c.saturation), 1.0 + c.saturation),
            (-c.hue, c.hue),
        ]
        # Operations whose range is not a single neutral value (torchvision skips those with strength 0).
        self._jitter_enabled = [strength > 0 for strength in (c.brightness, c.contrast, c.saturation, c.hue)]
        if not 0.0 <= c.hue <= 0.5:
            raise ValueError(f"`hue` must be in [0, 0.5], got {c.hue}.")
        if c.interpolation != "bilinear":
            raise ValueError(
                f"The views made on the device are resized bilinearly (`torchvision.ops.roi_align`), but "
                f"`interpolation={c.interpolation!r}` was asked for: use `interpolation='bilinear'`, or make the "
                "views in the DataLoader workers (`augment_on_device=False`, `MultiCropTransform`)."
            )

    @classmethod
    def from_lejepa_config(cls, config: Any, image_processor: Any = None, **overrides) -> DeviceMultiCrop:
        """`DeviceMultiCrop(MultiCropConfig.from_lejepa_config(config, image_processor, **overrides))`."""
        return cls(MultiCropConfig.from_lejepa_config(config, image_processor, **overrides))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    # ------------------------------------------------------------------------------------------------ parameters
    def _kinds(self) -> list[tuple[str, int, int, tuple[float, float], list[float], list[float]]]:
        """(output key, views per image, side, crop scale, blur probability and solarize probability per view)."""
        c = self.config
        kinds = [(
            "pixel_values", c.num_global_views, c.global_image_size, c.global_crop_scale,
            [_per_view(c.global_blur_prob, v) for v in range(c.num_global_views)],
            [_per_view(c.global_solarize_prob, v) for v in range(c.num_global_views)],
        )]
        if c.num_local_views > 0:
            kinds.append((
                "local_pixel_values", c.num_local_views, c.local_image_size, c.local_crop_scale,
                [c.local_blur_prob] * c.num_local_views, [c.local_solarize_prob] * c.num_local_views,
            ))
        return kinds

    def sample_parameters(self, batch_size: int, generator: torch.Generator) -> dict[str, ViewParameters]:
        """
        Draws the parameters of every view of `batch_size` images, on the host, from `generator`.

        Returns:
            `dict[str, ViewParameters]`: under `"pixel_values"` (global views) and `"local_pixel_values"`.
        """
        c = self.config
        parameters = {}
        for key, count, _, scale, blur_probs, solarize_probs in self._kinds():
            n = batch_size * count

            def uniform(*shape: int, low: float = 0.0, high: float = 1.0, dtype=torch.float64) -> torch.Tensor:
                return torch.rand(*shape, generator=generator, dtype=dtype) * (high - low) + low

            def bernoulli(probability: float | torch.Tensor, n: int = n) -> torch.Tensor:
                return torch.rand(n, generator=generator) < probability

            per_view = torch.arange(count).repeat(batch_size)  # view index v of row b * V + v
            crop_area = uniform(n, CROP_ATTEMPTS, low=scale[0], high=scale[1])
            crop_log_ratio = uniform(n, CROP_ATTEMPTS, low=math.log(c.crop_ratio[0]), high=math.log(c.crop_ratio[1]))
            crop_offset = uniform(n, 2)
            flip = bernoulli(c.horizontal_flip_prob)
            jitter = bernoulli(c.color_jitter_prob) & any(self._jitter_enabled)
            factors = torch.stack(
                [uniform(n, low=low, high=high, dtype=torch.float32) for low, high in self._jitter_ranges], dim=1
            )
            order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)  # a uniform random permutation
            grayscale = bernoulli(c.grayscale_prob)
            blur = bernoulli(torch.tensor(blur_probs)[per_view])
            sigma = uniform(n, low=c.blur_sigma[0], high=c.blur_sigma[1], dtype=torch.float32)
            solarize = bernoulli(torch.tensor(solarize_probs)[per_view])
            channel_jitter = channel_factors = None
            if c.pixel_format == "float":  # drawn after the RGB draws, which stay those of 8-bit RGB data
                jitter = grayscale = solarize = torch.zeros(n, dtype=torch.bool)
                channel_jitter = bernoulli(c.channel_jitter_prob)
                channel_factors = torch.stack([
                    uniform(n, c.num_channels, low=1 - strength, high=1 + strength, dtype=torch.float32)
                    for strength in (c.channel_contrast, c.channel_brightness)
                ], dim=2)  # (n, C, 2)
            parameters[key] = ViewParameters(
                image_index=torch.arange(batch_size).repeat_interleave(count), crop_area=crop_area,
                crop_log_ratio=crop_log_ratio, crop_offset=crop_offset, flip=flip, jitter=jitter,
                jitter_factors=factors, jitter_order=order, grayscale=grayscale, blur=blur, blur_sigma=sigma,
                solarize=solarize, channel_jitter=channel_jitter, channel_factors=channel_factors,
            )
        return parameters

    def crop_boxes(self, image_sizes: torch.Tensor, parameters: ViewParameters) -> torch.Tensor:
        """
        torchvision's `RandomResizedCrop.get_params`, vectorised: for every view, the first of the `CROP_ATTEMPTS`
        (area, ratio) draws whose crop fits in its image, else the central crop with the aspect ratio clamped to
        `crop_ratio`; the position is uniform over the valid integer offsets.

        Args:
            image_sizes (`torch.LongTensor` of shape `(B, 2)`): true `(height, width)` of each image, on any device.
            parameters (`ViewParameters`): from `sample_parameters`.

        Returns:
            `torch.Tensor` of shape `(n, 4)`, float64, on the device of `image_sizes`: `(left, top, right, bottom)` in
            pixels (integers), the crop being the pixels `[top, bottom) x [left, right)`.
        """
        device = image_sizes.device
        sizes = image_sizes.to(torch.float64)[_to_device(parameters.image_index, device)]  # (n, 2)
        height, width = sizes[:, :1], sizes[:, 1:]
        area = height * width * _to_device(parameters.crop_area, device)  # (n, attempts)
        ratio = torch.exp(_to_device(parameters.crop_log_ratio, device))
        w = torch.round(torch.sqrt(area * ratio))
        h = torch.round(torch.sqrt(area / ratio))
        valid = (w > 0) & (h > 0) & (w <= width) & (h <= height)
        first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first valid attempt (0 if none)
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        found = valid.any(dim=1)
        # Fallback: the whole image, narrowed to the ratio range.
        height, width = height[:, 0], width[:, 0]
        low, high = self.config.crop_ratio
        in_ratio = width / height
        fallback_w = torch.where(in_ratio > high, torch.round(height * high), width)
        fallback_h = torch.where(in_ratio < low, torch.round(width / low), height)
        w, h = torch.where(found, w, fallback_w), torch.where(found, h, fallback_h)
        offset = _to_device(parameters.crop_offset, device)
        top = torch.where(found, torch.floor(offset[:, 0] * (height - h + 1)), torch.floor((height - h) / 2))
        left = torch.where(found, torch.floor(offset[:, 1] * (width - w + 1)), torch.floor((width - w) / 2))
        return torch.stack([left, top, left + w, top + h], dim=1)

    # --------------------------------------------------------------------------------------------------- views
    def render(
        self, images: torch.Tensor, image_sizes: torch.Tensor, parameters: dict[str, ViewParameters]
    ) -> dict[str, torch.Tensor]:
        """
        Cuts and augments the views described by `parameters`.

        Args:
            images (`torch.ByteTensor` of shape `(B, 3, H, W)`): the padded batch, on the device that does the work
                (for `pixel_format="float"`: `float32` of shape `(B, C, H, W)`, already multiplied by
                `rescale_factor`).
                Pixels right of and below each image's true size are padding (`MultiCropCollator` repeats the last
                row and column there, so that bilinear samples at the border see the image's own edge).
            image_sizes (`torch.LongTensor` of shape `(B, 2)`): true `(height, width)` of each image.
            parameters (`dict[str, ViewParameters]`): from `sample_parameters`.

        Returns:
            `dict[str, torch.Tensor]`: `"pixel_values"` `(B, Vg, C, S, S)` and, with local views,
            `"local_pixel_values"` `(B, Vl, C, s, s)`, float32, normalised.
        """
        c = self.config
        channels = c.num_channels
        dtype = torch.uint8 if c.pixel_format == "rgb" else torch.float32
        if images.dtype != dtype or images.ndim != 4 or images.shape[1] != channels:
            raise ValueError(
                f"Expected a {dtype} batch of shape (B, {channels}, H, W) for pixel_format={c.pixel_format!r}, got "
                f"{images.dtype} of shape {tuple(images.shape)}."
            )
        batch_size = images.shape[0]
        # (B, C, H, W), contiguous (the collator's canvas is channels last); 8-bit RGB to [0, 1]
        pixels = images.to(torch.float32, memory_format=torch.contiguous_format)
        if c.pixel_format == "rgb":
            pixels = pixels.div_(255.0)
        mean = _to_device(torch.tensor(c.image_mean, dtype=torch.float32), images.device).view(1, channels, 1, 1)
        std = _to_device(torch.tensor(c.image_std, dtype=torch.float32), images.device).view(1, channels, 1, 1)
        output = {}
        for key, count, side, *_ in self._kinds():
            p = parameters[key]
            boxes = self.crop_boxes(image_sizes, p)
            index = _to_device(p.image_index, boxes.device).to(boxes.dtype)
            rois = torch.cat([index[:, None], boxes], dim=1).to(torch.float32)  # (n, 5): image, box
            # aligned=True: pixel i covers [i, i + 1), so a box of integer edges covers exactly its pixels
            views = roi_align(pixels, rois, output_size=(side, side), spatial_scale=1.0, sampling_ratio=-1,
                              aligned=True)  # (n, C, side, side)
            views = self._augment(views, p, side)
            output[key] = views.sub_(mean).div_(std).view(batch_size, count, channels, side, side)
        return output

    def _augment(self, views: torch.Tensor, p: ViewParameters, side: int) -> torch.Tensor:
        """Flip, colour jitter (or the per-channel jitter), grayscale, blur and solarize, each on the views that drew
        it (index sets known on the host, so no host sync)."""
        c = self.config
        device = views.device

        def apply(mask: torch.Tensor, function, *arguments: torch.Tensor) -> None:
            index = mask.nonzero()[:, 0]  # a host tensor: its size is known without a device sync
            if len(index) == 0:
                return
            device_index = _to_device(index, device)
            selected = views.index_select(0, device_index)
            result = function(selected, *(_to_device(argument[index], device) for argument in arguments))
            views.index_copy_(0, device_index, result)

        apply(p.flip, lambda x: x.flip(-1))
        operations = (
            adjust_brightness_accumulative,
            adjust_contrast_with_mean_subtraction,
            adjust_saturation_with_gray_subtraction,
            lambda x, factor: adjust_hue(x, factor * (2 * math.pi)),  # kornia's hue is in radians
        )
        for position in range(4):  # torchvision's ColorJitter: the four operations in a random order per view
            for operation, function in enumerate(operations):
                if self._jitter_enabled[operation]:
                    mask = p.jitter & (p.jitter_order[:, position] == operation)
                    apply(mask, function, p.jitter_factors[:, operation])
        if p.channel_jitter is not None:
            apply(p.channel_jitter, channel_jitter, p.channel_factors)
        apply(p.grayscale, lambda x: rgb_to_grayscale(x).expand(-1, 3, -1, -1))
        kernel_size = c.blur_kernel_size or 2 * math.ceil(3 * c.blur_sigma[1]) + 1
        kernel_size = min(kernel_size, 2 * side - 1)  # reflect padding needs the half kernel inside the view
        apply(p.blur, lambda x, sigma: gaussian_blur2d(x, kernel_size, sigma[:, None].expand(-1, 2).contiguous(),
                                                       border_type="reflect"), p.blur_sigma)
        threshold = c.solarize_threshold / 255.0
        apply(p.solarize, lambda x: torch.where(x >= threshold, 1.0 - x, x))
        return views

    def __call__(
        self, images: torch.Tensor, image_sizes: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """`render(images, image_sizes, sample_parameters(len(images), generator))`."""
        return self.render(images, image_sizes, self.sample_parameters(images.shape[0], generator))


def decode_jpegs(encoded: Sequence[np.ndarray], device: torch.device) -> list[torch.Tensor | None]:
    """
    Decodes the JPEG bytes of a batch (`read_jpeg_for_device`) to RGB `uint8` images `(3, h, w)` on `device`, with
    torchcodec: in one batched call on CUDA (nvJPEG), with libjpeg-turbo elsewhere (the images are then moved to
    `device`). One bad file fails a batched call, which is then repeated image by image.

    Returns:
        `list`: the images, `None` for those that failed to decode (logged as warnings).
    """
    try:
        from torchcodec.decoders import decode_jpeg
    except ImportError as error:
        raise ImportError(
            "`decode_on_device` decodes JPEGs with torchcodec: `pip install 'lejepa-hf[gpu]'` (or `pip install "
            "torchcodec`), or leave the decoding to the DataLoader workers (`--decode_on_device False`)."
        ) from error
    decode_device = device if device.type == "cuda" else torch.device("cpu")
    sources = [torch.from_numpy(data) for data in encoded]
    try:
        images: list[torch.Tensor | None] = list(decode_jpeg(sources, mode="RGB", device=decode_device))
    except RuntimeError:
        images = []
        for source in sources:
            try:
                images.append(decode_jpeg(source, mode="RGB", device=decode_device))
            except RuntimeError as error:
                logger.warning(f"Skipping a JPEG that failed to decode on {decode_device}: {error}")
                images.append(None)
    return [None if image is None else image.to(device) for image in images]


def append_device_decoded(
    images: torch.Tensor | None,
    image_sizes: torch.Tensor | None,
    encoded: Sequence[np.ndarray],
    resize: DecodeResizeTransform,
    device: torch.device,
) -> tuple[torch.Tensor | None, torch.Tensor | None, list[int]]:
    """
    The canvas of a batch whose JPEGs were left to the device (`MultiCropCollator` with `decode_on_device`): the
    images the workers decoded (`images`, `image_sizes`, on `device`, or `None`), then the JPEGs of `encoded`,
    decoded (`decode_jpegs`) and resized (`DecodeResizeTransform.resize_on_device`) on `device`, padded as the
    collator pads (`fill_canvas_slot`).

    Returns:
        `tuple`: the canvas `(B, 3, H, W)` and the sizes `(B, 2)` (both `None` when no image is left), and the
        positions in `encoded` of the JPEGs that failed to decode (left out).
    """
    decoded = decode_jpegs(encoded, device)
    failed = [index for index, image in enumerate(decoded) if image is None]
    new = [resize.resize_on_device(image) for image in decoded if image is not None]
    blocks = ([images] if images is not None else []) + new
    if not blocks:
        return None, None, failed
    height = max(block.shape[-2] for block in blocks)
    width = max(block.shape[-1] for block in blocks)
    first = 0 if images is None else images.shape[0]
    canvas = torch.empty((first + len(new), 3, height, width), dtype=torch.uint8, device=device)
    if images is not None:
        fill_canvas_slot(canvas[:first], images)  # the workers' canvas as one block, its padding kept
    for slot, image in zip(canvas[first:], new):
        fill_canvas_slot(slot, image)
    new_sizes = _to_device(torch.tensor([list(image.shape[-2:]) for image in new], dtype=torch.long), device)
    sizes = new_sizes.view(-1, 2) if image_sizes is None else torch.cat([image_sizes, new_sizes.view(-1, 2)])
    return canvas, sizes, failed


__all__ = ["DeviceMultiCrop", "ViewParameters", "append_device_decoded", "decode_jpegs", "view_generator"]
