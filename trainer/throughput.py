"""
Model FLOPs of a LeJEPA training step and model FLOPs utilisation (MFU), for `LeJepaTrainer`'s logs.

The forward FLOPs of one image are counted once per set of view shapes by `torch.utils.flop_counter.FlopCounterMode`
on a copy of the model built on the `meta` device (no memory, no computation) with eager attention, so that attention
is counted as its two matmuls: every view at its own resolution through the backbone and the projector, plus SIGReg's
projection onto its directions (`2 K M` per view). A training step is counted as 3 forward passes (the backward pass
costs about twice the forward), Trainer's own convention (`6 N` per parameter and token).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Dense bf16 (and fp16) tensor-core peaks, FLOP/s, matched against `torch.cuda.get_device_name()`.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def forward_flops_per_image(config, view_shapes: Sequence[tuple[int, int, int, int]]) -> float:
    """
    Forward FLOPs of one image through `LeJepaForPreTraining(config)`.

    Args:
        config (`LeJepaConfig`): the model's configuration.
        view_shapes (`Sequence[tuple[int, int, int, int]]`): `(V, C, H, W)` of each resolution's views of one image
            (e.g. `[(2, 3, 224, 224), (6, 3, 96, 96)]`).

    Returns:
        `float`: FLOPs (a multiply-add counts 2).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_lejepa import LeJepaForPreTraining

    config = copy.deepcopy(config)
    if hasattr(config.backbone_config, "_attn_implementation"):
        config.backbone_config._attn_implementation = "eager"  # attention as matmuls, which the counter knows
    with torch.device("meta"):
        model = LeJepaForPreTraining(config).eval()
    counter = FlopCounterMode(display=False)
    num_images = 2  # BatchNorm-free shapes either way; 2 keeps any batch-size check happy
    with torch.no_grad(), counter:
        for count, channels, height, width in view_shapes:
            if count == 0:
                continue
            views = torch.empty(num_images * count, channels, height, width, device="meta")
            model.projector(model.lejepa(views).pooler_output)
    num_views = sum(shape[0] for shape in view_shapes)
    sigreg = 2 * config.projector_output_size * config.sigreg_num_slices * num_views
    return counter.get_total_flops() / num_images + sigreg


def peak_flops(device: torch.device) -> float | None:
    """The dense bf16 peak of a known GPU (per device), else `None`."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


class TrainingFlops:
    """
    Training FLOPs (3 x forward) of a batch, by the shapes of its views, cached: the counting runs once per shape.

    Args:
        config (`LeJepaConfig`): the model's configuration.
    """

    def __init__(self, config):
        self.config = config
        self._per_image: dict[tuple, float | None] = {}

    def per_image(self, view_shapes: Sequence[tuple[int, int, int, int]]) -> float | None:
        """Training FLOPs of one image with views of these `(V, C, H, W)` shapes; `None` if the model cannot be
        counted on the meta device (then Trainer's default count is used)."""
        key = tuple(tuple(int(d) for d in shape) for shape in view_shapes)
        if key not in self._per_image:
            try:
                self._per_image[key] = 3.0 * forward_flops_per_image(self.config, key)
            except Exception as error:  # a backbone that does not build or run on the meta device
                logger.warning(f"Cannot count the model's FLOPs on the meta device ({error}); using Trainer's count.")
                self._per_image[key] = None
        return self._per_image[key]


__all__ = ["PEAK_BF16_FLOPS", "TrainingFlops", "forward_flops_per_image", "peak_flops"]
