"""`lejepa-evaluate` on several models: any `transformers` image backbone, one JSON, one side-by-side card table,
and the embedding cache."""

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import (
    AutoImageProcessor,
    AutoModel,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    TimmWrapperConfig,
    TimmWrapperModel,
    ViTConfig,
    ViTModel,
)

import trainer.evaluation
from model_cards.card import EVAL_RESULTS_NAME
from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining, LeJepaModel
from trainer.cli import evaluate_main
from trainer.data import load_digits_dataset
from trainer.evaluation import default_image_processor, embed, evaluate_embeddings, random_init_like
from trainer.evaluation_command import EvaluationArguments, load_model, model_labels
from trainer.export import save_timm_native

TINY_VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "image_size": 32, "patch_size": 8}
COMMON = ["--builtin_dataset", "digits", "--max_train_samples", "120", "--max_eval_samples", "40",
          "--sigreg_num_slices", "32"]
METRICS = ("knn_accuracy", "linear_probe_accuracy", "effective_rank", "sigreg_statistic", "embedding_size")


def save_lejepa(folder, seed=0):
    torch.manual_seed(seed)
    LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test")).save_pretrained(folder)
    default_image_processor(32).save_pretrained(folder)
    return str(folder)


def save_dinov2(folder, seed=0):
    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(**TINY_VISION)).save_pretrained(folder)
    default_image_processor(32).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset(image_size=32, test_fraction=0.2)


def alone(folder, digits):
    """The library's evaluation of one model folder, loaded as plain `AutoModel` with its image processor."""
    model = AutoModel.from_pretrained(folder).eval()
    return evaluate_embeddings(
        model, digits["train"], digits["test"], image_processor=AutoImageProcessor.from_pretrained(folder),
        max_train_samples=120, max_eval_samples=40, sigreg_num_slices=32,
    )


def card_rows(card_dir):
    text = (card_dir / "README.md").read_text()
    return [line.split(" | ")[0][2:] for line in text.splitlines() if line.startswith("| ") and "digits" in line]


def test_lejepa_and_dinov2_side_by_side(tmp_path, digits):
    lejepa, dinov2 = save_lejepa(tmp_path / "lejepa"), save_dinov2(tmp_path / "dinov2")
    args = ["--model_name_or_path", dinov2, lejepa, "--random_init_baseline", "--update_model_card", *COMMON]
    results = evaluate_main(args)

    # one JSON, beside the card model (the LeJEPA checkpoint, though listed second), with a row per model
    written = json.loads((tmp_path / "lejepa" / "eval_results.json").read_text())
    assert written == json.loads(json.dumps(results))
    assert written["card_model"] == lejepa and written["dataset_name"] == "digits"
    assert [m["model_name_or_path"] for m in written["models"]] == [dinov2, lejepa]
    assert [m["model_label"] for m in written["models"]] == ["dinov2", "lejepa"]
    by_name = {m["model_name_or_path"]: m for m in written["models"]}
    assert "random_init_baseline" in by_name[lejepa] and "random_init_baseline" not in by_name[dinov2]
    for name in (dinov2, lejepa):  # each row is the model evaluated alone
        reference = alone(name, digits)
        for key in METRICS:
            assert by_name[name][key] == pytest.approx(reference[key], rel=1e-6), (name, key)
        assert by_name[name]["dataset_name"] == "digits" and by_name[name]["eval_split"] == "test"
    torch.manual_seed(0)
    baseline = evaluate_embeddings(
        random_init_like(AutoModel.from_pretrained(lejepa), seed=0), digits["train"], digits["test"],
        image_processor=default_image_processor(32), max_train_samples=120, max_eval_samples=40, sigreg_num_slices=32,
    )
    assert by_name[lejepa]["random_init_baseline"]["knn_accuracy"] == baseline["knn_accuracy"]

    # the card: one table, the model-index of the LeJEPA model only
    card_dir = tmp_path / "lejepa"
    assert card_rows(card_dir) == ["this model", "random init, same architecture", "dinov2"]
    dinov2_row = (card_dir / "README.md").read_text().split("| dinov2 |")[1].splitlines()[0]
    assert f"{100 * by_name[dinov2]['knn_accuracy']:.2f}%" in dinov2_row
    card = ModelCard.load(card_dir / "README.md")
    assert {r.metric_value for r in card.data.eval_results} == {
        round(by_name[lejepa]["knn_accuracy"], 6), round(by_name[lejepa]["linear_probe_accuracy"], 6)
    }
    assert not (tmp_path / "dinov2" / "README.md").exists()

    # re-running replaces the rows; a run of the LeJEPA model alone keeps the compared row
    evaluate_main(args)
    assert card_rows(card_dir) == ["this model", "random init, same architecture", "dinov2"]
    evaluate_main(["--model_name_or_path", lejepa, "--update_model_card", *COMMON])
    assert card_rows(card_dir) == ["this model", "dinov2"]
    saved = json.loads((card_dir / EVAL_RESULTS_NAME).read_text())
    assert len(saved) == 1 and [m["model_label"] for m in saved[0]["compared_models"]] == ["dinov2"]


def test_embedding_cache_skips_every_forward_pass(tmp_path, monkeypatch):
    lejepa, dinov2 = save_lejepa(tmp_path / "lejepa"), save_dinov2(tmp_path / "dinov2")
    calls = []

    def counting_embed(model, pixel_values):
        calls.append(type(model).__name__)
        return embed(model, pixel_values)

    monkeypatch.setattr(trainer.evaluation, "embed", counting_embed)
    cache = tmp_path / "cache"
    args = ["--model_name_or_path", lejepa, dinov2, "--random_init_baseline", "--embedding_cache_dir", str(cache),
            "--output_dir", str(tmp_path / "out"), *COMMON]
    first = evaluate_main(args)
    assert sorted(set(calls)) == ["Dinov2Model", "LeJepaModel"] and len(list(cache.glob("*.npz"))) == 6
    calls.clear()
    assert evaluate_main(args) == first and calls == []  # no forward pass at all, the same numbers

    # a model saved again (other weights) is embedded again; the others still come from the cache
    save_dinov2(tmp_path / "dinov2", seed=1)
    third = evaluate_main(args)
    assert set(calls) == {"Dinov2Model"}
    assert third["models"][0] == first["models"][0] and third["models"][1] != first["models"][1]
    # other images (more eval samples) are other entries
    calls.clear()
    evaluate_main([*args, "--max_eval_samples", "30", "--model_name_or_path", lejepa])
    assert set(calls) == {"LeJepaModel"}


def test_errors_name_the_model(tmp_path):
    text_model = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100)).save_pretrained(text_model)
    lejepa = save_lejepa(tmp_path / "lejepa")
    with pytest.raises(ValueError, match=rf"{text_model} is a 'bert' model .*not an image backbone"):
        evaluate_main(["--model_name_or_path", lejepa, str(text_model), *COMMON])
    with pytest.raises(ValueError, match="more than once"):
        EvaluationArguments(model_name_or_path=[lejepa, str(tmp_path / "." / "lejepa")])
    with pytest.raises(ValueError, match="not one of"):
        EvaluationArguments(model_name_or_path=[lejepa], card_model=str(text_model))
    with pytest.raises(ValueError, match="local checkpoint folder"):
        evaluate_main(["--model_name_or_path", lejepa, "org/hub-model", "--card_model", "org/hub-model",
                       "--update_model_card", *COMMON])


def test_model_labels_are_short_and_distinct(tmp_path):
    for run in ("a", "b"):
        (tmp_path / run / "checkpoint").mkdir(parents=True)
    (tmp_path / "lejepa").mkdir()
    first, second = str(tmp_path / "a" / "checkpoint"), str(tmp_path / "b" / "checkpoint")
    names = [str(tmp_path / "lejepa"), "facebook/dinov2-small", first, second]
    assert model_labels(names) == ["lejepa", "facebook/dinov2-small", first, second]


def test_each_family_gives_its_embedding(tmp_path):
    """ViT: the final-normed CLS token (not its Linear + tanh pooler); DINOv2 and CLIP's vision tower, also from a
    full CLIP folder: their `pooler_output`; timm: its pooled features; LeJEPA: `LeJepaModel`'s `pooler_output`."""
    torch.manual_seed(0)
    pixel_values = torch.randn(3, 3, 32, 32)
    vit = ViTModel(ViTConfig(**TINY_VISION)).eval()
    dinov2 = Dinov2Model(Dinov2Config(**TINY_VISION)).eval()
    clip_vision = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).eval()
    text = {key: TINY_VISION[key] for key in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
    clip = CLIPModel(CLIPConfig(vision_config=TINY_VISION, text_config={**text, "vocab_size": 99, "bos_token_id": 0,
                                                                        "eos_token_id": 1}, projection_dim=8)).eval()
    timm = TimmWrapperModel(TimmWrapperConfig(architecture="resnet10t")).eval()
    lejepa = LeJepaModel(LeJepaConfig.from_preset("vit-tiny-test")).eval()
    with torch.no_grad():
        expected = {
            "vit": vit(pixel_values).last_hidden_state[:, 0],
            "dinov2": dinov2(pixel_values).last_hidden_state[:, 0],  # DINOv2's pooler: the final-normed CLS token
            "clip_vision": clip_vision(pixel_values).pooler_output,
            "clip": clip.vision_model(pixel_values=pixel_values).pooler_output,
            "timm": timm.timm_model.forward_head(timm.timm_model.forward_features(pixel_values), pre_logits=True),
            "lejepa": lejepa(pixel_values).pooler_output,
        }
    for name, model in (("vit", vit), ("dinov2", dinov2), ("clip_vision", clip_vision), ("clip", clip),
                        ("lejepa", lejepa)):
        model.save_pretrained(tmp_path / name)
    save_timm_native(timm, tmp_path / "timm", image_size=32)
    for name, embedding in expected.items():
        loaded, image_processor = load_model(EvaluationArguments(model_name_or_path=[str(tmp_path / name)]))
        with torch.no_grad():
            np.testing.assert_allclose(embed(loaded.eval(), pixel_values), embedding, rtol=1e-5, atol=1e-6,
                                       err_msg=name)
        assert image_processor is not None
    assert type(load_model(EvaluationArguments(model_name_or_path=[str(tmp_path / "clip")]))[0]) is CLIPVisionModel
    # the timm folder's own processor (its pretrained_cfg) at the resolution it was saved with
    _, timm_processor = load_model(EvaluationArguments(model_name_or_path=[str(tmp_path / "timm")]))
    processed = timm_processor(images=[np.zeros((40, 40, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    assert type(timm_processor).__name__ == "TimmWrapperImageProcessor" and processed.shape[-2:] == (32, 32)
