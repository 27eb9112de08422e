"""Configuration, models, Auto registration and remote-code loading."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO_ROOT, run_without_package
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    ConvNextConfig,
    Dinov2Config,
    ResNetConfig,
    TimmWrapperConfig,
)

from modeling_lejepa import (
    LeJepaConfig,
    LeJepaForImageClassification,
    LeJepaForPreTraining,
    LeJepaModel,
)

TINY = {"projector_hidden_size": 32, "projector_output_size": 8, "sigreg_num_slices": 16}


def tiny_config(**kwargs) -> LeJepaConfig:
    return LeJepaConfig.from_preset("vit-tiny-test", **kwargs)


# ----------------------------------------------------------------------------------------------------------- config
def test_presets_build_and_list():
    assert {"vit-small-patch16", "vit-base-patch16", "vit-large-patch14", "vit-huge-patch14"} <= set(
        LeJepaConfig.available_presets()
    )
    assert LeJepaConfig().backbone_config.hidden_size == 768  # default: ViT-B/16
    assert LeJepaConfig.from_preset("resnet-50").backbone_config.model_type == "resnet"


def test_vit_huge_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = LeJepaModel(LeJepaConfig.from_preset("vit-huge-patch14"))
    num_parameters = sum(p.numel() for p in model.parameters())
    assert all(p.device.type == "meta" for p in model.parameters())
    assert 625e6 < num_parameters < 640e6, num_parameters  # ViT-H/14: about 632M


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lambda_sigreg": 1.5}, "lambda_sigreg"),
        ({"lambda_sigreg": -0.1}, "lambda_sigreg"),
        ({"sigreg_num_knots": 16}, "odd"),
        ({"sigreg_num_knots": 1}, "odd"),
        ({"sigreg_num_slices": 0}, "sigreg_num_slices"),
        ({"sigreg_t_max": 0.0}, "sigreg_t_max"),
        ({"local_image_size": 100}, "multiple of 16 such as 96"),
        ({"global_image_size": 230}, "patch size 16"),
        ({"local_crop_scale": (0.5, 0.1)}, "local_crop_scale"),
    ],
)
def test_invalid_config_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LeJepaConfig(**kwargs)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="vit-huge-patch14"):
        LeJepaConfig.from_preset("vit-gigantic")


def test_backbone_dict_needs_model_type():
    with pytest.raises(ValueError, match="model_type"):
        LeJepaConfig(backbone_config={"hidden_size": 32})


def test_config_round_trip(tmp_path):
    config = tiny_config(lambda_sigreg=0.1, num_local_views=4)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, LeJepaConfig)
    assert loaded.to_diff_dict() | {"_name_or_path": ""} == config.to_diff_dict() | {"_name_or_path": ""}
    assert loaded.backbone_config.to_dict() == config.backbone_config.to_dict()


# ----------------------------------------------------------------------------------------------------------- models
def test_pretraining_output_shapes_mixed_resolutions():
    model = LeJepaForPreTraining(tiny_config())
    outputs = model(torch.randn(3, 2, 3, 32, 32), local_pixel_values=torch.randn(3, 5, 3, 16, 16), step=0)
    assert outputs.embeddings.shape == (3, 7, 32)
    assert outputs.projections.shape == (3, 7, 16)
    assert outputs.loss.shape == () and outputs.prediction_loss.shape == () and outputs.sigreg_loss.shape == ()
    # without local views, and with global views larger than the configured size
    outputs = model(torch.randn(3, 2, 3, 48, 48), step=0)
    assert outputs.projections.shape == (3, 2, 16)


def test_pretraining_embeddings_equal_backbone_embeddings():
    model = LeJepaForPreTraining(tiny_config()).eval()
    global_views, local_views = torch.randn(2, 2, 3, 32, 32), torch.randn(2, 3, 3, 16, 16)
    with torch.no_grad():
        outputs = model(global_views, local_pixel_values=local_views, step=0)
        torch.testing.assert_close(outputs.embeddings[:, 1], model.lejepa(global_views[:, 1]).pooler_output)
        torch.testing.assert_close(outputs.embeddings[:, 4], model.lejepa(local_views[:, 2]).pooler_output)


def test_pretraining_rejects_unstacked_views():
    model = LeJepaForPreTraining(tiny_config())
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.randn(2, 3, 32, 32))


def test_vit_embedding_is_final_normed_cls_token():
    model = LeJepaModel(tiny_config()).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, 40, 56))  # any resolution
    assert outputs.pooler_output.shape == (2, 32)
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 0])
    assert model.backbone.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(
    "backbone_config",
    [
        Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     patch_size=8, image_size=32),
        ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
        ResNetConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], embedding_size=8),
        TimmWrapperConfig(architecture="resnet10t", do_pooling=True),
    ],
    ids=["dinov2", "convnext", "resnet", "timm"],
)
def test_other_backbones(backbone_config):
    config = LeJepaConfig(backbone_config=backbone_config, global_image_size=32, local_image_size=32, **TINY)
    model = LeJepaForPreTraining(config)
    outputs = model(torch.randn(2, 2, 3, 32, 32), local_pixel_values=torch.randn(2, 2, 3, 32, 32), step=0)
    assert outputs.embeddings.shape == (2, 4, model.lejepa.embedding_size)
    outputs.loss.backward()
    assert torch.isfinite(outputs.loss)


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = LeJepaForPreTraining(tiny_config())
    inputs = {"pixel_values": torch.randn(4, 2, 3, 32, 32), "local_pixel_values": torch.randn(4, 2, 3, 16, 16)}
    model(**inputs, step=0).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    model(**inputs, step=0).loss.backward()
    for name, grad in reference.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


def test_image_classification_head():
    config = tiny_config(num_labels=10)
    model = LeJepaForImageClassification(config)
    model.freeze_backbone()
    outputs = model(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3]))
    assert outputs.logits.shape == (4, 10)
    outputs.loss.backward()
    assert all(p.grad is None for p in model.lejepa.parameters())
    assert model.classifier.weight.grad is not None


# ------------------------------------------------------------------------------------------------ saving and Auto
def test_auto_classes_resolve():
    config = tiny_config()
    assert type(AutoModel.from_config(config)) is LeJepaModel
    assert type(AutoModelForPreTraining.from_config(config)) is LeJepaForPreTraining
    assert type(AutoModelForImageClassification.from_config(config)) is LeJepaForImageClassification


def test_save_and_load_round_trip_is_bit_exact(tmp_path):
    model = LeJepaForPreTraining(tiny_config())
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "modeling_lejepa.py", "configuration_lejepa.py", "sigreg.py"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_lejepa.LeJepaModel"
    assert auto_map["AutoModelForPreTraining"] == "modeling_lejepa.LeJepaForPreTraining"

    loaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    backbone = AutoModel.from_pretrained(tmp_path).eval()  # the backbone alone from a pretraining checkpoint
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(backbone(pixel_values).pooler_output, model.eval().lejepa(pixel_values).pooler_output)


def test_remote_code_in_fresh_process_without_package(tmp_path):
    """A user without this package loads the checkpoint with trust_remote_code and gets the same embeddings."""
    checkpoint = tmp_path / "checkpoint"
    model = LeJepaForPreTraining(tiny_config()).eval()
    model.save_pretrained(checkpoint)
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.save(pixel_values, tmp_path / "pixels.pt")
    with torch.no_grad():
        expected = model.lejepa(pixel_values).pooler_output
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "LeJepaModel", type(model)
        pixels = torch.load({str(tmp_path / "pixels.pt")!r}, weights_only=True)
        with torch.no_grad():
            torch.save(model(pixels).pooler_output, {str(tmp_path / "out.pt")!r})
        """
    )
    run_without_package(script, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "out.pt", weights_only=True), expected)


def test_readme_python_example_runs(tmp_path):
    """Every ```python block of the README runs as written."""
    readme = (REPO_ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    assert blocks, "the README has no Python example"
    for block in blocks:
        subprocess.run(
            [sys.executable, "-c", block], cwd=tmp_path, check=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"},
        )
