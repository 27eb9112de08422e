"""LeJEPA model configuration."""

from __future__ import annotations

import copy
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Backbone settings of the named presets. ViT sizes follow the ViT / DINOv2 papers; ViT-H/14 has about 631M
# parameters. The ViT presets use DINOv2's architecture in transformers (a ViT with pre-norm blocks, a LayerScale
# initialised to 1, the identity at the start of training, and stochastic depth), since the recipe trains with drop
# path 0.1, which `ViTModel` cannot do. Patch-14 presets use 98 px local views, the multiple of 14 closest to the
# paper's 96 px.
_VIT = {"model_type": "dinov2", "image_size": 224, "qkv_bias": True, "layer_norm_eps": 1e-6, "mlp_ratio": 4,
        "drop_path_rate": 0.1, "layerscale_value": 1.0, "use_mask_token": False}
# Small models for small images: a plain `ViTModel` (no stochastic depth) with 16 tokens of 8 x 8 px at 32 px, a small
# projector and 64 SIGReg directions.
_PLAIN_VIT_32PX = {"model_type": "vit", "image_size": 32, "qkv_bias": True, "layer_norm_eps": 1e-6, "patch_size": 8}
_SMALL_VIEWS = {"projector_hidden_size": 64, "projector_output_size": 16, "sigreg_num_slices": 64,
                "global_image_size": 32, "local_image_size": 16}
PRESETS: dict[str, dict[str, Any]] = {
    "vit-small-patch16": {
        "backbone_config": {**_VIT, "patch_size": 16, "hidden_size": 384, "num_hidden_layers": 12,
                            "num_attention_heads": 6},
    },
    "vit-base-patch16": {
        "backbone_config": {**_VIT, "patch_size": 16, "hidden_size": 768, "num_hidden_layers": 12,
                            "num_attention_heads": 12},
    },
    "vit-large-patch14": {
        "backbone_config": {**_VIT, "patch_size": 14, "hidden_size": 1024, "num_hidden_layers": 24,
                            "num_attention_heads": 16},
        "local_image_size": 98,
    },
    "vit-huge-patch14": {
        "backbone_config": {**_VIT, "patch_size": 14, "hidden_size": 1280, "num_hidden_layers": 32,
                            "num_attention_heads": 16},
        "local_image_size": 98,
    },
    "resnet-50": {
        "backbone_config": {"model_type": "resnet", "layer_type": "bottleneck", "depths": [3, 4, 6, 3],
                            "hidden_sizes": [256, 512, 1024, 2048], "embedding_size": 64},
    },
    "convnext-tiny": {
        "backbone_config": {"model_type": "convnext", "depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768],
                            "drop_path_rate": 0.1},
    },
    # Small images (up to about 64 px: thumbnails, patches, tiles) on a CPU: a 0.15M-parameter plain `ViTModel`
    # (hidden 64, 4 layers, 16 tokens of 8 x 8 px) on 2 global views of 32 px and 2 local views of 16 px, the model of
    # the built-in photos recipe.
    "vit-small-images": {
        "backbone_config": {**_PLAIN_VIT_32PX, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
                            "intermediate_size": 128},
        **_SMALL_VIEWS,
        "num_local_views": 2,
    },
    # A few-second model for tests and demos: a plain `ViTModel` (no stochastic depth).
    "vit-tiny-test": {
        "backbone_config": {**_PLAIN_VIT_32PX, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "intermediate_size": 64},
        **_SMALL_VIEWS,
    },
}


# The view settings that `trainer.data.MultiCropConfig` shares with `LeJepaConfig`: their defaults are `LeJepaConfig`'s
# and both check them with `check_view_geometry`.
VIEW_GEOMETRY_FIELDS = (
    "num_global_views", "num_local_views", "global_image_size", "local_image_size", "global_crop_scale",
    "local_crop_scale",
)


def check_view_geometry(
    num_global_views: int,
    num_local_views: int,
    global_image_size: int,
    local_image_size: int,
    global_crop_scale: tuple[float, float],
    local_crop_scale: tuple[float, float],
) -> None:
    """
    Raises `ValueError` naming the first invalid view setting (see `LeJepaConfig` for their meaning) and what is
    allowed: at least one global view, no negative number of local views, positive image sizes, and crop scales
    `(min, max)` with `0 < min <= max <= 1`.
    """
    if num_global_views < 1:
        raise ValueError(f"`num_global_views` must be a positive integer, got {num_global_views}.")
    if num_local_views < 0:
        raise ValueError(f"`num_local_views` must be >= 0, got {num_local_views}.")
    for name, size in (("global_image_size", global_image_size), ("local_image_size", local_image_size)):
        if size < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {size}.")
    for name, scale in (("global_crop_scale", global_crop_scale), ("local_crop_scale", local_crop_scale)):
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"`{name}` must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}.")


def backbone_num_channels(backbone_config: Any) -> int:
    """The input channels of a backbone configuration: its `num_channels` (ViT, DINOv2, ConvNeXt, ResNet, ...), or
    for timm (`TimmWrapperConfig`) the `in_chans` of its `model_args` (3 when unset, timm's default)."""
    if getattr(backbone_config, "model_type", None) == "timm_wrapper":
        return int((backbone_config.model_args or {}).get("in_chans", 3))
    return int(getattr(backbone_config, "num_channels", 3))


def set_backbone_num_channels(backbone_config: Any, num_channels: int) -> None:
    """Sets the input channels of a backbone configuration in place (`num_channels`, or timm's `in_chans`).

    Raises:
        `ValueError`: for fewer than 1 channel, or a backbone configuration with no channel setting.
    """
    if num_channels < 1:
        raise ValueError(f"`num_channels` must be a positive integer, got {num_channels}.")
    if getattr(backbone_config, "model_type", None) == "timm_wrapper":
        backbone_config.model_args = {**(backbone_config.model_args or {}), "in_chans": int(num_channels)}
    elif hasattr(backbone_config, "num_channels"):
        backbone_config.num_channels = int(num_channels)
    else:
        raise ValueError(
            f"The {type(backbone_config).__name__} has no `num_channels`: its input channels cannot be set to "
            f"{num_channels}."
        )


@strict
class LeJepaConfig(PreTrainedConfig):
    r"""
    Configuration of a LeJEPA model: a vision backbone, a projector, the SIGReg regulariser and the multi-crop views
    (Balestriero & LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics").

    The settings of the loss and of the views live here so that they travel with the checkpoint.

    Args:
        backbone_config (`dict` or `PreTrainedConfig`, *optional*):
            Configuration of the backbone, any vision model that `AutoModel.from_config` builds (ViT, DINOv2,
            ConvNeXt, ResNet, timm through `TimmWrapperConfig`, ...). A dict needs a `model_type` key. Defaults to
            a ViT-B/16 with drop path 0.1 (DINOv2's architecture, the `vit-base-patch16` preset).
        projector_hidden_size (`int`, *optional*, defaults to 2048):
            Width of the hidden layers of the projector.
        projector_num_layers (`int`, *optional*, defaults to 3):
            Number of linear layers of the projector: `projector_num_layers - 1` Linear-BN-ReLU blocks then a Linear.
        projector_output_size (`int`, *optional*, defaults to 128):
            Dimension `K` of the projections on which the loss is computed.
        projector_use_batch_norm (`bool`, *optional*, defaults to `True`):
            Whether the hidden projector blocks use BatchNorm. Under DDP the statistics are per process, as in the
            paper's code; convert with `torch.nn.SyncBatchNorm.convert_sync_batchnorm` for global statistics.
        sigreg_num_slices (`int`, *optional*, defaults to 1024):
            Number `M` of random unit directions on which SIGReg tests Gaussianity, resampled every step.
        sigreg_num_knots (`int`, *optional*, defaults to 17):
            Number of trapezoid knots on `[0, sigreg_t_max]` for the Epps-Pulley integral. Odd, at least 3.
        sigreg_t_max (`float`, *optional*, defaults to 3.0):
            Upper end of the integration range of the Epps-Pulley statistic.
        lambda_sigreg (`float`, *optional*, defaults to 0.05):
            Trade-off in `loss = (1 - lambda_sigreg) * prediction + lambda_sigreg * sigreg`, in `[0, 1]`.
        num_global_views (`int`, *optional*, defaults to 2):
            Global views per image; their mean projection is the prediction target.
        num_local_views (`int`, *optional*, defaults to 6):
            Local views per image (0 for all-global training, e.g. with ConvNets).
        global_image_size (`int`, *optional*, defaults to 224):
            Side in pixels of the global views.
        local_image_size (`int`, *optional*, defaults to 96):
            Side in pixels of the local views.
        global_crop_scale (`tuple[float, float]`, *optional*, defaults to `(0.3, 1.0)`):
            `RandomResizedCrop` area range of the global views.
        local_crop_scale (`tuple[float, float]`, *optional*, defaults to `(0.05, 0.3)`):
            `RandomResizedCrop` area range of the local views.
        classifier_dropout (`float`, *optional*, defaults to 0.0):
            Dropout before the linear head of `LeJepaForImageClassification`.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the truncated normal initialisation of the projector and the classifier head (the
            backbone follows its own config's).

    Example:

    ```python
    >>> from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining

    >>> config = LeJepaConfig.from_preset("vit-tiny-test")
    >>> model = LeJepaForPreTraining(config)
    >>> config.backbone_config.model_type
    'vit'
    ```
    """

    model_type = "lejepa"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig, model_type="dinov2", init_kwargs=PRESETS["vit-base-patch16"]["backbone_config"]
        ),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    projector_hidden_size: int = 2048
    projector_num_layers: int = 3
    projector_output_size: int = 128
    projector_use_batch_norm: bool = True
    sigreg_num_slices: int = 1024
    sigreg_num_knots: int = 17
    sigreg_t_max: float | int = 3.0
    lambda_sigreg: float | int = 0.05
    num_global_views: int = 2
    num_local_views: int = 6
    global_image_size: int = 224
    local_image_size: int = 96
    global_crop_scale: list[float] | tuple[float, float] = (0.3, 1.0)
    local_crop_scale: list[float] | tuple[float, float] = (0.05, 0.3)
    classifier_dropout: float | int = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict) and "model_type" not in self.backbone_config:
            raise ValueError(
                "`backbone_config` given as a dict needs a `model_type` key (for example 'vit', 'dinov2', "
                f"'convnext', 'resnet' or 'timm_wrapper'); got keys {sorted(self.backbone_config)}."
            )
        self.global_crop_scale = tuple(self.global_crop_scale)
        self.local_crop_scale = tuple(self.local_crop_scale)
        super().__post_init__(**kwargs)
        self._check_values()

    def _check_values(self) -> None:
        """Raises `ValueError` naming any invalid loss or view setting and what is allowed."""
        if not 0.0 <= self.lambda_sigreg <= 1.0:
            raise ValueError(f"`lambda_sigreg` must be in [0, 1] (paper default 0.05), got {self.lambda_sigreg}.")
        if self.sigreg_num_knots < 3 or self.sigreg_num_knots % 2 == 0:
            raise ValueError(
                f"`sigreg_num_knots` must be an odd integer >= 3 (default 17), got {self.sigreg_num_knots}."
            )
        for name in ("sigreg_num_slices", "projector_hidden_size", "projector_output_size", "projector_num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.sigreg_t_max <= 0:
            raise ValueError(f"`sigreg_t_max` must be positive (default 3.0), got {self.sigreg_t_max}.")
        check_view_geometry(**{name: getattr(self, name) for name in VIEW_GEOMETRY_FIELDS})
        patch_size = getattr(self.backbone_config, "patch_size", None)
        if isinstance(patch_size, (list, tuple)):
            patch_size = patch_size[0]
        if isinstance(patch_size, int):
            sizes = {"global_image_size": self.global_image_size}
            if self.num_local_views > 0:
                sizes["local_image_size"] = self.local_image_size
            for name, size in sizes.items():
                if size % patch_size != 0:
                    fit = max(patch_size, round(size / patch_size) * patch_size)
                    raise ValueError(
                        f"`{name}`={size} is not a multiple of the backbone's patch size {patch_size}; "
                        f"use a multiple of {patch_size} such as {fit}."
                    )

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> LeJepaConfig:
        """
        Builds the configuration of a named preset, e.g. `LeJepaConfig.from_preset("vit-huge-patch14")`.

        Args:
            name (`str`): one of `LeJepaConfig.available_presets()`.
            kwargs: overrides of any configuration attribute.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}. Known presets: {', '.join(cls.available_presets())}.")
        settings = copy.deepcopy(PRESETS[name])
        backbone = settings.pop("backbone_config")
        backbone_type = backbone.pop("model_type")
        backbone_config = AutoConfig.for_model(backbone_type, **backbone)
        settings.update(kwargs)
        return cls(backbone_config=settings.pop("backbone_config", backbone_config), **settings)

    @property
    def num_channels(self) -> int:
        """Input channels of the backbone (3 for RGB; 1 for grayscale, 13 for Sentinel-2, ...): `backbone_config`
        holds it (see `backbone_num_channels`)."""
        return backbone_num_channels(self.backbone_config)

    @staticmethod
    def available_presets() -> list[str]:
        """Names accepted by `from_preset`."""
        return list(PRESETS)


__all__ = [
    "VIEW_GEOMETRY_FIELDS",
    "LeJepaConfig",
    "backbone_num_channels",
    "check_view_geometry",
    "set_backbone_num_channels",
]
