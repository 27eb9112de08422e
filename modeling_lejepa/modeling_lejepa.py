"""PyTorch LeJEPA model: any `transformers` vision backbone, a projector, and the LeJEPA loss."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_lejepa import LeJepaConfig
from .sigreg import SIGReg, prediction_loss

# Written into `config.json` on save, so that a checkpoint of any head loads with any of these Auto classes.
_AUTO_MAP = {
    "AutoModel": "LeJepaModel",
    "AutoModelForPreTraining": "LeJepaForPreTraining",
    "AutoModelForImageClassification": "LeJepaForImageClassification",
}


# ---------------------------------------------------------------------------------------------------------------------
# What the embedding is: the one definition, used by the models, the evaluation, the export and the model cards
# ---------------------------------------------------------------------------------------------------------------------

# Backbones whose own pooler is a trained head (Linear + tanh) rather than a pooling: LeJEPA uses the final-normed
# CLS token instead, so they are built without it.
CLS_TOKEN_BACKBONES = ("vit", "deit")


def uses_cls_token(backbone_config: PreTrainedConfig) -> bool:
    """Whether LeJEPA's embedding of this backbone is the final-normed CLS token `last_hidden_state[:, 0]`, the
    backbone being built without its own pooler (a trained Linear + tanh head, not a pooling): ViT and DeiT."""
    return backbone_config.model_type in CLS_TOKEN_BACKBONES


def build_backbone(backbone_config: PreTrainedConfig) -> PreTrainedModel:
    """The backbone of a LeJEPA model, `AutoModel.from_config(backbone_config)`, without its pooler where LeJEPA does
    not use it (`uses_cls_token`)."""
    kwargs = {"add_pooling_layer": False} if uses_cls_token(backbone_config) else {}
    return AutoModel.from_config(backbone_config, **kwargs)


def embedding_size(backbone_config: PreTrainedConfig, backbone: nn.Module | None = None) -> int:
    """
    Dimension of LeJEPA's image embedding (the `pooler_output` of `LeJepaModel`) for a backbone: the width of a timm
    model's pooled features (`num_features`), the last stage's width of a ConvNet (`hidden_sizes[-1]`), else
    `hidden_size`.

    Args:
        backbone_config (`PreTrainedConfig`): the backbone's configuration.
        backbone (`nn.Module`, *optional*): the built backbone. Only a timm backbone needs it (its width is not in
            the configuration); without it, the timm model is built on the meta device, which allocates nothing.
    """
    if backbone_config.model_type == "timm_wrapper":
        if backbone is None:
            with torch.device("meta"):
                backbone = AutoModel.from_config(backbone_config)
        return backbone.timm_model.num_features
    if getattr(backbone_config, "hidden_sizes", None):  # ConvNets
        return backbone_config.hidden_sizes[-1]
    return backbone_config.hidden_size


def pool_embedding(outputs: ModelOutput) -> torch.Tensor:
    """
    LeJEPA's image embedding `(batch, dim)` from a backbone's outputs: its `pooler_output` when it pools (DINOv2's
    final-normed CLS token, ConvNeXt's normed average, ResNet's average, flattened from `(B, C, 1, 1)`; an exported
    ViT's identity pooler), else the final-normed CLS token `last_hidden_state[:, 0]` of a token backbone built
    without its pooler, else the spatial mean of a feature map `(B, C, H, W)`.
    """
    pooled = getattr(outputs, "pooler_output", None)
    if pooled is None:
        hidden = outputs.last_hidden_state
        pooled = hidden[:, 0] if hidden.dim() == 3 else hidden.mean(dim=tuple(range(2, hidden.dim())))
    return pooled.flatten(1)


def accepts_interpolate_pos_encoding(model: nn.Module) -> bool:
    """Whether `model.forward` takes `interpolate_pos_encoding` (ViT-like backbones), which LeJEPA always sets so that
    any input resolution works."""
    return "interpolate_pos_encoding" in inspect.signature(model.forward).parameters


def input_image_size(config: PreTrainedConfig) -> int:
    """Side in pixels of a model's input images: `global_image_size` of a LeJEPA configuration, else a backbone
    configuration's `image_size`, else `LeJepaConfig`'s default `global_image_size`."""
    size = getattr(config, "global_image_size", None) or getattr(config, "image_size", None)
    size = size or LeJepaConfig.global_image_size
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _output_flags(
    config: LeJepaConfig, output_hidden_states: bool | int | list[int] | None, output_attentions: bool | None
) -> dict[str, bool | int | list[int]]:
    """The backbone's `output_*` keyword arguments: an explicit argument, else the top-level config's flag when set
    (the backbone's own config decides when neither is). A layer selection (`int` or `list[int]`) is kept as is."""
    flags = {}
    for name, value in (("output_hidden_states", output_hidden_states), ("output_attentions", output_attentions)):
        if value is None and getattr(config, name, False):
            value = getattr(config, name)
        if value is not None:
            flags[name] = value
    return flags


@dataclass
class LeJepaForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`LeJepaForPreTraining`].

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            `(1 - lambda_sigreg) * prediction_loss + lambda_sigreg * sigreg_loss`.
        prediction_loss (`torch.FloatTensor` of shape `()`):
            Mean squared difference between the projection of every view and the mean of the global views'.
        sigreg_loss (`torch.FloatTensor` of shape `()`):
            SIGReg of the projections, averaged over views and directions.
        embeddings (`torch.FloatTensor` of shape `(batch_size, num_views, hidden_size)`):
            Backbone embeddings of all views, global views first.
        projections (`torch.FloatTensor` of shape `(batch_size, num_views, projector_output_size)`):
            Projector outputs of all views, global views first.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states`):
            The backbone's hidden states for the global views, stacked view-major: row `v * batch_size + b` is view
            `v` of image `b`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions`):
            The backbone's attention weights for the global views, stacked as `hidden_states`.
    """

    loss: torch.FloatTensor | None = None
    prediction_loss: torch.FloatTensor | None = None
    sigreg_loss: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    projections: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class LeJepaPreTrainedModel(PreTrainedModel):
    config: LeJepaConfig
    config_class = LeJepaConfig
    base_model_prefix = "lejepa"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """Saves like `PreTrainedModel.save_pretrained`, with an `auto_map` naming every LeJEPA class, so that the
        folder of any head loads with `AutoModel`, `AutoModelForPreTraining` or `AutoModelForImageClassification`."""
        self.config.auto_map = {"AutoConfig": "configuration_lejepa.LeJepaConfig"}
        self.config.auto_map.update({name: f"modeling_lejepa.{cls}" for name, cls in _AUTO_MAP.items()})
        super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal linear layers (`config.initializer_range`); norms, including the projector BatchNorm's
        running statistics (mean 0, variance 1, no batch tracked), as `PreTrainedModel._init_weights`. Only what a
        checkpoint did not provide is initialised, so continuing from a backbone-only checkpoint is safe."""
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class LeJepaModel(LeJepaPreTrainedModel):
    """
    The LeJEPA backbone alone. `forward` returns the backbone's `last_hidden_state` and, as `pooler_output`, the
    image embedding used downstream: the final-normed CLS token for ViTs, the pooled features for ConvNets (whatever
    the backbone pools otherwise). Any input resolution works: ViT position embeddings are interpolated.
    """

    # A pretraining or classification checkpoint loads as the backbone alone without a report of unused heads.
    _keys_to_ignore_on_load_unexpected = [r"^projector\.", r"^norm\.", r"^classifier\."]

    def __init__(self, config: LeJepaConfig):
        super().__init__(config)
        self.backbone = build_backbone(config.backbone_config)
        self._interpolate = accepts_interpolate_pos_encoding(self.backbone)
        # The units of FSDP's auto-wrap (accelerate's TRANSFORMER_BASED_WRAP reads `model._no_split_modules`) and of
        # `device_map`: `post_init` adds the backbone's own (ViTLayer, Dinov2Layer, ConvNextLayer, ResNetConvLayer,
        # ...), and the parent classes collect them from here. timm declares only the whole model: add its blocks.
        self._no_split_modules = _timm_block_classes(self.backbone) if hasattr(self.backbone, "timm_model") else []
        self.post_init()
        # accelerate's FSDP2 preparation shards `get_input_embeddings()` (ViT's patch embeddings) as a unit of its
        # own, and fails when a unit already holds it: the modules around it (ViTEmbeddings, ...) are left out.
        input_embeddings = self.get_input_embeddings()
        if input_embeddings is not None:
            self._no_split_modules -= {
                type(module).__name__
                for module in self.backbone.modules()
                if module is not input_embeddings and any(m is input_embeddings for m in module.modules())
            }

    def get_input_embeddings(self) -> nn.Module | None:
        try:
            return self.backbone.get_input_embeddings()
        except NotImplementedError:  # ResNet has none; accelerate's FSDP preparation asks every model for them
            return None

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | int | list[int] | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images of any size (a multiple of the patch size for ViTs), normalised by the image processor.
            output_hidden_states (`bool`, `int` or `list[int]`, *optional*):
                Return the backbone's hidden states (all of them, or those of the given layer indices, as in
                `transformers`). Defaults to `config.output_hidden_states`.
            output_attentions (`bool`, *optional*):
                Return the attention weights (attention backbones, with `attn_implementation="eager"`). Defaults to
                `config.output_attentions`.
            return_dict (`bool`, *optional*):
                Return a `BaseModelOutputWithPooling` rather than a tuple. Defaults to `config.return_dict`.

        Example:

        ```python
        >>> import torch
        >>> from modeling_lejepa import LeJepaConfig, LeJepaModel

        >>> model = LeJepaModel(LeJepaConfig.from_preset("vit-tiny-test")).eval()
        >>> outputs = model(torch.randn(2, 3, 48, 48))
        >>> outputs.pooler_output.shape
        torch.Size([2, 32])
        ```
        """
        kwargs.update(_output_flags(self.config, output_hidden_states, output_attentions))
        if self._interpolate:
            kwargs["interpolate_pos_encoding"] = True
        outputs = self.backbone(pixel_values, return_dict=True, **kwargs)
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.last_hidden_state,
            pooler_output=pool_embedding(outputs),  # (B, D)
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )

    @property
    def embedding_size(self) -> int:
        """Dimension of `pooler_output` (see `embedding_size`)."""
        return embedding_size(self.config.backbone_config, self.backbone)


def _timm_block_classes(backbone: nn.Module) -> list[str]:
    """Class names of the repeated blocks of a timm backbone: the children of `blocks` (ViT, EVA), `stages` (ConvNeXt,
    RegNet) or `layer1`... (ResNet), one level deeper where these are plain containers (EfficientNet)."""
    timm_model = backbone.timm_model
    names = ("blocks", "stages", "layer1", "layer2", "layer3", "layer4")
    containers = [getattr(timm_model, n) for n in names if isinstance(getattr(timm_model, n, None), nn.Module)]
    blocks: set[str] = set()
    for container in containers:
        for child in container.children():
            is_plain = type(child) in (nn.Sequential, nn.ModuleList)
            blocks.update(type(module).__name__ for module in (child.children() if is_plain else [child]))
    return sorted(blocks)


class LeJepaProjector(nn.Module):
    """`projector_num_layers - 1` blocks of Linear-BatchNorm-ReLU, then a Linear to `projector_output_size`."""

    def __init__(self, config: LeJepaConfig, input_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        size = input_size
        for _ in range(config.projector_num_layers - 1):
            layers.append(nn.Linear(size, config.projector_hidden_size, bias=not config.projector_use_batch_norm))
            if config.projector_use_batch_norm:
                layers.append(nn.BatchNorm1d(config.projector_hidden_size))
            layers.append(nn.ReLU(inplace=True))
            size = config.projector_hidden_size
        layers.append(nn.Linear(size, config.projector_output_size))
        self.layers = nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


class LeJepaForPreTraining(LeJepaPreTrainedModel):
    """
    LeJEPA pretraining: backbone, projector, and the loss
    `(1 - lambda_sigreg) * prediction + lambda_sigreg * SIGReg` with no teacher and no stop-gradient.
    """

    def __init__(self, config: LeJepaConfig):
        super().__init__(config)
        self.lejepa = LeJepaModel(config)
        self.projector = LeJepaProjector(config, self.lejepa.embedding_size)
        self.sigreg = SIGReg(config.sigreg_num_slices, config.sigreg_num_knots, config.sigreg_t_max)
        self._forward_calls = 0
        self.post_init()

    @staticmethod
    def _views_by_resolution(
        pixel_values: torch.Tensor, local_pixel_values: torch.Tensor | None
    ) -> list[torch.Tensor]:
        """The global views, then the local ones when there are any, each `(B, V, C, H, W)`, of the same images."""
        views = [pixel_values]
        if local_pixel_values is not None and local_pixel_values.shape[1] > 0:
            if local_pixel_values.shape[0] != pixel_values.shape[0]:
                raise ValueError(
                    f"`local_pixel_values` has {local_pixel_values.shape[0]} images but `pixel_values` "
                    f"{pixel_values.shape[0]}."
                )
            views.append(local_pixel_values)
        return views

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        local_pixel_values: torch.Tensor | None = None,
        step: int | torch.Tensor | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> LeJepaForPreTrainingOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_global_views, num_channels, height, width)`):
                Global views; their mean projection is the prediction target.
            local_pixel_values (`torch.FloatTensor` of shape `(batch_size, num_local_views, C, h, w)`, *optional*):
                Local views, at their own (usually smaller) resolution.
            step (`int` or 0-dim `torch.Tensor`, *optional*):
                Seed of SIGReg's random directions, the global training step (`LeJepaTrainer` passes it, as a tensor so
                that `torch.compile` does not recompile every step). When `None`, a counter of the calls made in
                training mode is used.
            output_hidden_states, output_attentions, return_dict:
                As in `LeJepaModel.forward`; hidden states and attentions are those of the global views, and the
                output is a `LeJepaForPreTrainingOutput`.

        Example:

        ```python
        >>> import torch
        >>> from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining

        >>> model = LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test"))
        >>> outputs = model(torch.randn(4, 2, 3, 32, 32), local_pixel_values=torch.randn(4, 6, 3, 16, 16), step=0)
        >>> outputs.projections.shape
        torch.Size([4, 8, 16])
        ```
        """
        if pixel_values.dim() != 5:
            raise ValueError(
                "`pixel_values` must hold the global views stacked as (batch_size, num_views, channels, height, "
                f"width), got shape {tuple(pixel_values.shape)}. For a single view use `pixel_values.unsqueeze(1)`."
            )
        if step is None:
            step = self._forward_calls
            self._forward_calls += int(self.training)
        batch_size, num_global = pixel_values.shape[:2]

        # Backbone: one pass per resolution, views stacked view-major: (V*B, C, H, W) -> (V*B, D)
        views = self._views_by_resolution(pixel_values, local_pixel_values)
        flags = _output_flags(self.config, output_hidden_states, output_attentions)
        # the global views' pass returns the requested hidden states and attentions
        backbone_outputs = [
            self.lejepa(v.transpose(0, 1).flatten(0, 1), return_dict=True, **(flags if i == 0 else {}), **kwargs)
            for i, v in enumerate(views)
        ]
        embeddings = torch.cat([outputs.pooler_output for outputs in backbone_outputs])  # (V*B, D)
        projections = self.projector(embeddings)  # (V*B, K), BatchNorm statistics over all views

        num_views = embeddings.shape[0] // batch_size
        projections = projections.view(num_views, batch_size, -1)  # (V, B, K)
        pred_loss = prediction_loss(projections[:num_global], projections)
        sigreg_loss = self.sigreg(projections, step)
        lambd = self.config.lambda_sigreg
        loss = (1.0 - lambd) * pred_loss + lambd * sigreg_loss

        return LeJepaForPreTrainingOutput(
            loss=loss,
            prediction_loss=pred_loss.detach(),
            sigreg_loss=sigreg_loss.detach(),
            embeddings=embeddings.view(num_views, batch_size, -1).transpose(0, 1),  # (B, V, D)
            projections=projections.transpose(0, 1),  # (B, V, K)
            hidden_states=backbone_outputs[0].hidden_states,
            attentions=backbone_outputs[0].attentions,
        )


class LeJepaForImageClassification(LeJepaPreTrainedModel):
    """
    A LeJEPA backbone with a LayerNorm + Linear head on the image embedding: the linear probe of the paper's
    evaluation (freeze the backbone with `model.freeze_backbone()`), or full fine-tuning.
    """

    def __init__(self, config: LeJepaConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.lejepa = LeJepaModel(config)
        embedding_size = self.lejepa.embedding_size
        self.norm = nn.LayerNorm(embedding_size)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(embedding_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def freeze_backbone(self) -> None:
        """Freezes the backbone for linear probing; only the LayerNorm and the Linear head train."""
        self.lejepa.requires_grad_(False)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images normalised by the image processor.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Targets of the loss chosen by `config.problem_type` as in every `transformers` classifier (inferred
                when unset: regression for `num_labels == 1`, cross-entropy for integer labels, binary cross-entropy
                for float multi-label targets).
            output_hidden_states (`bool`, `int` or `list[int]`, *optional*):
                Return the backbone's hidden states. Defaults to `config.output_hidden_states`.
            output_attentions (`bool`, *optional*):
                Return the attention weights. Defaults to `config.output_attentions`.
            return_dict (`bool`, *optional*):
                Return an `ImageClassifierOutput` rather than a tuple. Defaults to `config.return_dict`.
        """
        outputs = self.lejepa(
            pixel_values,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
            **kwargs,
        )
        logits = self.classifier(self.dropout(self.norm(outputs.pooler_output)))
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


__all__ = [
    "CLS_TOKEN_BACKBONES",
    "LeJepaForImageClassification",
    "LeJepaForPreTraining",
    "LeJepaForPreTrainingOutput",
    "LeJepaModel",
    "LeJepaPreTrainedModel",
    "accepts_interpolate_pos_encoding",
    "build_backbone",
    "embedding_size",
    "input_image_size",
    "pool_embedding",
    "uses_cls_token",
]
