"""Export of the backbone to its native `transformers` architecture, loaded back in a fresh process without the
package and without `trust_remote_code`."""

import json

import numpy as np
import pytest
import torch
from conftest import run_without_package
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel

from model_cards import build_model_card
from modeling_lejepa import LeJepaConfig, LeJepaForImageClassification, LeJepaForPreTraining, LeJepaModel
from modeling_lejepa.configuration_lejepa import PRESETS
from trainer.cli import export_main
from trainer.evaluation import default_image_processor, evaluate_embeddings
from trainer.export import export_backbone

SMALL_HEAD = {"projector_hidden_size": 32, "projector_output_size": 8, "sigreg_num_slices": 16}
CONV_BACKBONES = {
    "resnet": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [16, 24], "depths": [1, 1],
               "layer_type": "basic"},
    "convnext": {"model_type": "convnext", "num_stages": 2, "hidden_sizes": [8, 16], "depths": [1, 1],
                 "drop_path_rate": 0.1},
}  # fmt: skip


def lejepa_config(kind: str) -> LeJepaConfig:
    if kind == "vit":
        return LeJepaConfig.from_preset("vit-tiny-test")
    if kind == "dinov2":  # the ViT presets' architecture (drop path 0.1) at a test size
        backbone = {**PRESETS["vit-small-patch16"]["backbone_config"], "hidden_size": 32, "num_hidden_layers": 2,
                    "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
        return LeJepaConfig(backbone_config=backbone, global_image_size=32, local_image_size=16, **SMALL_HEAD)
    return LeJepaConfig(backbone_config=CONV_BACKBONES[kind], global_image_size=32, num_local_views=0, **SMALL_HEAD)


def randomise_statistics(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that an export that drops buffers gives different embeddings."""
    generator = torch.Generator().manual_seed(0)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
        elif name.endswith("running_var"):
            buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """For a ViT, a ResNet and a ConvNeXt backbone: a pretraining checkpoint, its export, reference inputs and
    embeddings (`LeJepaModel.pooler_output`). The ViT checkpoint has an image processor and a model card, the
    others have neither."""
    root = tmp_path_factory.mktemp("export")
    cases = {}
    for index, kind in enumerate(("vit", "resnet", "convnext", "dinov2")):
        torch.manual_seed(index)
        model = LeJepaForPreTraining(lejepa_config(kind))
        randomise_statistics(model)
        checkpoint = root / f"{kind}-checkpoint"
        model.save_pretrained(checkpoint)
        if kind == "vit":
            default_image_processor(32).save_pretrained(checkpoint)
            build_model_card(
                model.config,
                checkpoint,
                dataset_names=["ylecun/mnist"],
                license="mit",
                model_id="org/lejepa-vit-tiny",
                eval_results={"dataset_name": "digits", "eval_split": "test", "knn_accuracy": 0.5, "knn_k": 20},
            )
        output = export_backbone(checkpoint, root / f"{kind}-native", model_id=f"org/{kind}-backbone")
        pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(index))
        with torch.no_grad():
            reference = LeJepaModel.from_pretrained(checkpoint).eval()(pixel_values).pooler_output
        torch.save({"pixel_values": pixel_values, "reference": reference}, root / f"{kind}-io.pt")
        cases[kind] = {"checkpoint": checkpoint, "output": output, "io": root / f"{kind}-io.pt"}
    return root, cases


FRESH_PROCESS = """
import json, sys
import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline

cases = json.loads(open("cases.json").read())
results = {}
for kind, case in cases.items():
    model, info = AutoModel.from_pretrained(case["output"], output_loading_info=True)
    model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert type(model).__module__.startswith("transformers.models."), type(model)
    io = torch.load(case["io"])
    with torch.no_grad():
        outputs = model(pixel_values=io["pixel_values"])
    embedding = outputs.pooler_output.flatten(1)
    results[kind] = {"type": type(model).__name__, "embedding": embedding.tolist()}
    if kind == "vit":
        assert torch.equal(outputs.pooler_output, outputs.last_hidden_state[:, 0])
    # the pipeline's pooled output is the embedding of the processed image
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 36, 3), dtype=np.uint8))
    processor = AutoImageProcessor.from_pretrained(case["output"])
    with torch.no_grad():
        expected = model(**processor(images=image, return_tensors="pt")).pooler_output.flatten(1)
    pooled = np.asarray(pipeline("image-feature-extraction", model=case["output"])(image, pool=True)).reshape(1, -1)
    assert np.allclose(pooled, expected.numpy(), atol=1e-5), (kind, pooled, expected)
assert "modeling_lejepa" not in sys.modules
json.dump(results, open("fresh_results.json", "w"))
print("FRESH OK")
"""


def test_native_export_loads_without_custom_code(exports):
    root, cases = exports
    fresh = root / "fresh"
    fresh.mkdir(exist_ok=True)
    (fresh / "cases.json").write_text(
        json.dumps({kind: {"output": str(c["output"]), "io": str(c["io"])} for kind, c in cases.items()})
    )
    result = run_without_package(FRESH_PROCESS, cwd=fresh)
    assert "FRESH OK" in result.stdout
    results = json.loads((fresh / "fresh_results.json").read_text())
    expected_types = {"vit": "ViTModel", "resnet": "ResNetModel", "convnext": "ConvNextModel", "dinov2": "Dinov2Model"}
    for kind, case in cases.items():
        assert results[kind]["type"] == expected_types[kind]
        reference = torch.load(case["io"])["reference"]
        embedding = torch.tensor(results[kind]["embedding"], dtype=reference.dtype)
        torch.testing.assert_close(embedding, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["vit", "resnet", "convnext", "dinov2"])
def test_export_folder_contents(exports, kind):
    _, cases = exports
    output = cases[kind]["output"]
    names = {path.name for path in output.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    assert not any(name.endswith((".py", ".bin")) for name in names)
    config = json.loads((output / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == kind
    weights = load_file(output / "model.safetensors")
    assert not any(key.startswith(("projector", "lejepa", "backbone")) for key in weights)
    if kind == "vit":
        assert config["pooler_act"] == "linear" and config["architectures"] == ["ViTModel"]
        torch.testing.assert_close(weights["pooler.dense.weight"], torch.eye(32), atol=0, rtol=0)
        # the processor is the checkpoint's, copied byte for byte
        assert (output / "preprocessor_config.json").read_bytes() == (
            cases[kind]["checkpoint"] / "preprocessor_config.json"
        ).read_bytes()
    else:  # no processor in the checkpoint: the default one, at the training resolution, ImageNet statistics
        processor = json.loads((output / "preprocessor_config.json").read_text())
        assert processor["size"] == {"height": 32, "width": 32}
        assert processor["image_mean"] == [0.485, 0.456, 0.406]


def test_export_model_card(exports):
    _, cases = exports
    vit = ModelCard.load(cases["vit"]["output"] / "README.md")
    assert vit.data.library_name == "transformers" and vit.data.pipeline_tag == "image-feature-extraction"
    assert vit.data.tags == ["lejepa", "jepa", "self-supervised", "vision", "vit"]
    # datasets, license and evaluation results come from the source card; its model name is the base model
    assert vit.data.datasets == ["ylecun/mnist"] and vit.data.license == "mit"
    assert vit.data.base_model == "org/lejepa-vit-tiny"
    assert [result.metric_value for result in vit.data.eval_results] == [0.5]
    text = vit.text
    assert "backbone alone" in text and "exported" in text and "`ViTModel`" in text
    assert 'AutoModel.from_pretrained("org/vit-backbone")' in text and "trust_remote_code=True" not in text
    assert "last_hidden_state[:, 0]" in text and "@article{balestriero2025lejepa" in text

    resnet = ModelCard.load(cases["resnet"]["output"] / "README.md")
    assert resnet.data.tags[-1] == "resnet" and resnet.data.license == "apache-2.0"
    assert resnet.data.datasets is None and resnet.data.eval_results is None
    assert "outputs.pooler_output.flatten(1)" in resnet.text


def test_export_any_head_and_cli(tmp_path):
    """A classification checkpoint exports too (its head is dropped), through the command line."""
    torch.manual_seed(0)
    model = LeJepaForImageClassification(LeJepaConfig.from_preset("vit-tiny-test", num_labels=3)).eval()
    model.save_pretrained(tmp_path / "classifier")
    output = export_main([str(tmp_path / "classifier"), str(tmp_path / "native"), "--license", "mit"])
    exported = AutoModel.from_pretrained(output).eval()
    assert type(exported).__name__ == "ViTModel"
    pixel_values = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            exported(pixel_values).pooler_output, model.lejepa(pixel_values).pooler_output, atol=1e-6, rtol=0
        )
    assert ModelCard.load(output / "README.md").data.license == "mit"


def test_export_rejects_a_non_lejepa_folder(tmp_path):
    AutoModel.from_config(LeJepaConfig.from_preset("vit-tiny-test").backbone_config).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="not a LeJEPA checkpoint"):
        export_backbone(tmp_path / "vit", tmp_path / "out")


def test_evaluation_of_export_matches_lejepa(exports):
    """`evaluate_embeddings` gives the same results on the export (plain ResNetModel) as on the LeJEPA checkpoint."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    _, cases = exports
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(48)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(num_classes=3)})
    data = Dataset.from_dict({"image": images, "label": [i % 3 for i in range(48)]}, features=features)
    train, test = data.select(range(36)), data.select(range(36, 48))
    processor = AutoImageProcessor.from_pretrained(cases["resnet"]["output"])  # the default one, 32 px
    kwargs = {"image_processor": processor, "knn_k": 5, "sigreg_num_slices": 32}
    lejepa = evaluate_embeddings(LeJepaModel.from_pretrained(cases["resnet"]["checkpoint"]), train, test, **kwargs)
    native = evaluate_embeddings(AutoModel.from_pretrained(cases["resnet"]["output"]), train, test, **kwargs)
    for key in ("knn_accuracy", "linear_probe_accuracy", "embedding_size"):
        assert lejepa[key] == native[key], key
    assert lejepa["effective_rank"] == pytest.approx(native["effective_rank"], rel=1e-5)


TIMM_FRESH_PROCESS = """
import json, sys
import timm
import torch
from transformers import AutoModel

case = json.loads(open("case.json").read())
io = torch.load(case["io"])
model = timm.create_model("local-dir:" + case["output"], pretrained=True).eval()
wrapped = AutoModel.from_pretrained(case["output"]).eval()
with torch.no_grad():
    results = {"timm": model(io["pixel_values"]).tolist(), "auto": wrapped(io["pixel_values"]).pooler_output.tolist(),
               "timm_type": type(model).__module__, "auto_type": type(wrapped).__name__}
assert "modeling_lejepa" not in sys.modules
json.dump(results, open("fresh_results.json", "w"))
print("FRESH OK")
"""


def test_timm_backbone_exports_a_timm_native_folder(tmp_path):
    """`timm.create_model(..., pretrained=True)` and `AutoModel` load the export, in a fresh process without this
    package, with the LeJEPA embedding."""
    from transformers import TimmWrapperConfig

    torch.manual_seed(0)
    config = LeJepaConfig(backbone_config=TimmWrapperConfig(architecture="resnet10t", do_pooling=True),
                          global_image_size=32, num_local_views=0, **SMALL_HEAD)
    model = LeJepaForPreTraining(config)
    randomise_statistics(model)
    model.save_pretrained(tmp_path / "checkpoint")
    output = export_backbone(tmp_path / "checkpoint", tmp_path / "native", model_id="org/timm-bb")
    timm_config = json.loads((output / "config.json").read_text())
    assert timm_config["architecture"] == "resnet10t" and timm_config["num_classes"] == 0
    assert timm_config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    weights = load_file(output / "model.safetensors")
    assert "conv1.0.weight" in weights and not any(key.startswith("timm_model.") for key in weights)  # timm's names
    assert "timm.create_model(\"hf-hub:org/timm-bb\", pretrained=True)" in (output / "README.md").read_text()

    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = LeJepaModel.from_pretrained(tmp_path / "checkpoint").eval()(pixel_values).pooler_output
    torch.save({"pixel_values": pixel_values}, tmp_path / "io.pt")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "case.json").write_text(json.dumps({"output": str(output), "io": str(tmp_path / "io.pt")}))
    assert "FRESH OK" in run_without_package(TIMM_FRESH_PROCESS, cwd=fresh).stdout
    results = json.loads((fresh / "fresh_results.json").read_text())
    assert results["timm_type"].startswith("timm.models.") and results["auto_type"] == "TimmWrapperModel"
    for loader in ("timm", "auto"):
        torch.testing.assert_close(torch.tensor(results[loader]), reference, atol=1e-6, rtol=0)
