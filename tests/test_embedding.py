"""The one definition of the embedding in `modeling_lejepa`: which backbones use the CLS token, the embedding size,
the pooling and the input size, against the outputs of the models they describe."""

import pytest
import torch
from transformers import TimmWrapperConfig, ViTConfig
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling

from modeling_lejepa import (
    LeJepaConfig,
    LeJepaModel,
    build_backbone,
    embedding_size,
    input_image_size,
    pool_embedding,
    uses_cls_token,
)

SMALL = {"projector_hidden_size": 32, "projector_output_size": 8, "sigreg_num_slices": 16}
BACKBONES = {
    "vit": LeJepaConfig.from_preset("vit-tiny-test").backbone_config,
    "dinov2": {"model_type": "dinov2", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 8},
    "resnet": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [16, 24], "depths": [1, 1],
               "layer_type": "basic"},
    "convnext": {"model_type": "convnext", "num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1]},
    "timm": TimmWrapperConfig(architecture="resnet10t", do_pooling=True),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(BACKBONES))
def test_embedding_size_is_the_width_of_the_pooled_output(kind):
    """`embedding_size` from the configuration alone (a timm model built on the meta device) and from the built
    backbone equals the width of `LeJepaModel`'s `pooler_output` on real images."""
    config = LeJepaConfig(backbone_config=BACKBONES[kind], global_image_size=32, num_local_views=0, **SMALL)
    model = LeJepaModel(config).eval()
    with torch.no_grad():
        pooled = model(torch.randn(2, 3, 32, 32)).pooler_output
    assert pooled.shape[0] == 2 and pooled.dim() == 2
    assert embedding_size(config.backbone_config) == embedding_size(config.backbone_config, model.backbone)
    assert embedding_size(config.backbone_config) == model.embedding_size == pooled.shape[1]
    assert uses_cls_token(config.backbone_config) == (kind == "vit")


def test_pool_embedding_by_hand():
    tokens = torch.randn(2, 5, 4)
    feature_map = torch.randn(2, 3, 4, 4)
    pooled = torch.randn(2, 6, 1, 1)
    # no pooler: the CLS token of tokens, the spatial mean of a feature map
    torch.testing.assert_close(pool_embedding(BaseModelOutput(last_hidden_state=tokens)), tokens[:, 0])
    torch.testing.assert_close(
        pool_embedding(BaseModelOutput(last_hidden_state=feature_map)), feature_map.mean(dim=(2, 3))
    )
    # a pooler: its output, flattened (ResNet's (B, C, 1, 1))
    outputs = BaseModelOutputWithPooling(last_hidden_state=feature_map, pooler_output=pooled)
    torch.testing.assert_close(pool_embedding(outputs), pooled[:, :, 0, 0])


def test_cls_token_backbones_are_built_without_pooler():
    vit = build_backbone(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    assert vit.pooler is None
    model = LeJepaModel(LeJepaConfig.from_preset("vit-tiny-test")).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 0], rtol=0, atol=0)


def test_input_image_size():
    assert input_image_size(LeJepaConfig.from_preset("vit-tiny-test", global_image_size=48)) == 48
    assert input_image_size(ViTConfig(image_size=40)) == 40
    assert input_image_size(ViTConfig(image_size=[36, 36])) == 36
    # no size in the configuration: LeJepaConfig's default global view size
    assert input_image_size(TimmWrapperConfig(architecture="resnet10t")) == LeJepaConfig().global_image_size == 224
