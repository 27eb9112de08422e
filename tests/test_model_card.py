"""Model cards: Hub metadata, body, plots, evaluation updates, and the documented usage run in a fresh process."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import run_without_package
from huggingface_hub import ModelCard
from PIL import Image
from transformers import TrainingArguments

from model_cards import (
    build_model_card,
    covariance_eigenvalues,
    effective_rank,
    plot_embedding_spectrum,
    plot_loss_curves,
    update_model_card,
)
from model_cards.card import EVAL_RESULTS_NAME, EVAL_SECTION_START
from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from trainer.evaluation import default_image_processor

TRAINING_ARGS = {
    "learning_rate": 5e-4,
    "weight_decay": 0.05,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine_with_min_lr",
    "lr_scheduler_kwargs": {"min_lr_rate": 1e-3},
    "per_device_train_batch_size": 64,
    "gradient_accumulation_steps": 2,
    "world_size": 2,
    "max_steps": 1000,
    "bf16": True,
    "seed": 7,
    "optim": "adamw_torch_fused",
}
LOG_HISTORY = [
    {"step": step, "loss": 2.0 / (1 + step), "prediction_loss": 1.0 / (1 + step), "sigreg_loss": 5.0 / (1 + step)}
    for step in range(0, 100, 10)
] + [{"step": 100, "train_runtime": 12.0, "train_loss": 0.3}, {"step": 100, "eval_loss": 0.5}]


def eval_result(dataset_name="digits", knn=0.81, linear=0.9):
    return {
        "dataset_name": dataset_name,
        "dataset_display_name": f"{dataset_name} images",
        "train_split": "train",
        "eval_split": "test",
        "num_train_samples": 1437,
        "num_eval_samples": 360,
        "knn_accuracy": knn,
        "linear_probe_accuracy": linear,
        "effective_rank": 20.5,
        "sigreg_statistic": 1.75,
        "embedding_size": 32,
        "knn_k": 20,
        "knn_protocol": "**k-NN**: cosine, k = 20.",
        "linear_probe_protocol": "**Linear probe**: logistic regression.",
        "random_init_baseline": {
            "knn_accuracy": 0.4,
            "linear_probe_accuracy": 0.5,
            "effective_rank": 3.0,
            "sigreg_statistic": 300.0,
        },
    }


def assert_png(path, min_width=300, min_height=200):
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        assert image.width >= min_width and image.height >= min_height, image.size


@pytest.fixture(scope="module")
def config():
    return LeJepaConfig.from_preset("vit-tiny-test")


def test_card_metadata_body_and_plots(tmp_path, config):
    embeddings = np.random.default_rng(0).normal(size=(200, 32))
    build_model_card(
        config,
        tmp_path,
        training_args=TRAINING_ARGS,
        log_history=LOG_HISTORY,
        eval_results=eval_result(),
        dataset_names=["ylecun/mnist"],
        base_model="org/lejepa-init",
        model_id="org/lejepa-vit-tiny",
        embeddings=embeddings,
    )
    card = ModelCard.load(tmp_path / "README.md")
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "image-feature-extraction"
    assert data.tags == ["lejepa", "jepa", "self-supervised", "vision", "vit"]
    assert data.license == "apache-2.0"
    assert data.datasets == ["ylecun/mnist"]
    assert data.base_model == "org/lejepa-init"
    # model-index: the accuracies of this model (not the baseline), parsed back by huggingface_hub
    assert data.model_name == "org/lejepa-vit-tiny"
    metrics = {result.metric_name: result.metric_value for result in data.eval_results}
    assert metrics == {"k-NN accuracy (k=20, frozen)": 0.81, "Linear probe accuracy (frozen)": 0.9}
    assert {result.dataset_type for result in data.eval_results} == {"digits"}
    assert {result.dataset_split for result in data.eval_results} == {"test"}

    text = card.text
    assert 'AutoModel.from_pretrained("org/lejepa-vit-tiny", trust_remote_code=True)' in text
    assert ".pooler_output" in text
    assert 'pipeline("image-feature-extraction", model="org/lejepa-vit-tiny", trust_remote_code=True' in text
    assert "pool=True" in text
    # citation
    assert "@article{balestriero2025lejepa" in text
    assert "LeJEPA: Provable and Scalable Self-Supervised Learning Without the Heuristics" in text
    assert "Balestriero, Randall and LeCun, Yann" in text and "2511.08544" in text and "2025" in text
    # recipe: LeJEPA settings and training arguments
    for row in (
        "| `lambda_sigreg` | 0.05 |",
        "| `sigreg_num_slices` | 64 |",
        "| `sigreg_num_knots` | 17 |",
        "| `num_local_views` | 6 |",
        "| `projector_output_size` | 16 |",
        "| `global_crop_scale` | (0.3, 1) |",
        "| Learning rate (peak) | 0.0005 |",
        "| Weight decay | 0.05 |",
        "| Warmup | 10% of the steps, linear |",
        "| Learning-rate schedule | cosine_with_min_lr (min_lr_rate=0.001) |",
        "| Global batch size | 256 |",
        "| Training steps | 1000 |",
        "| Precision | bf16 mixed precision |",
        "| Seed | 7 |",
    ):
        assert row in text, row
    # evaluation table, with the random-init baseline
    assert (
        "| this model | digits images | train / test (1437 / 360 images) | 81.00% | 90.00% | 20.5 / 32 | 1.75 |"
        in text
    )
    assert "| random init, same architecture |" in text
    # plots next to the card, linked from it
    assert "](loss_curves.png)" in text and "](embedding_spectrum.png)" in text
    assert_png(tmp_path / "loss_curves.png")
    assert_png(tmp_path / "embedding_spectrum.png")
    assert "Last logged values (step 90)" in text
    assert json.loads((tmp_path / EVAL_RESULTS_NAME).read_text())[0]["knn_accuracy"] == 0.81


def test_card_with_training_arguments_object_and_no_results(tmp_path, config):
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), learning_rate=1e-3, warmup_steps=5, num_train_epochs=3, use_cpu=True
    )
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": LOG_HISTORY}))
    default_image_processor(32).save_pretrained(tmp_path)
    build_model_card(config, tmp_path, training_args=args)
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.eval_results is None and card.data.datasets is None and card.data.base_model is None
    text = card.text
    assert "| Learning rate (peak) | 0.001 |" in text and "| Warmup | 5 steps, linear |" in text
    assert "| Epochs | 3 |" in text and "| Precision | fp32 |" in text
    assert "No evaluation results yet" in text and "embedding_spectrum.png" not in text
    assert f'AutoModel.from_pretrained("{tmp_path.name}", trust_remote_code=True)' in text
    assert "AutoImageProcessor.from_pretrained" in text  # the folder has a processor config
    assert_png(tmp_path / "loss_curves.png")  # read from trainer_state.json


def test_update_model_card_merges_results(tmp_path, config):
    build_model_card(config, tmp_path, eval_results=eval_result("digits", knn=0.5), model_id="org/m")
    before = ModelCard.load(tmp_path / "README.md").text
    update_model_card(
        tmp_path, eval_result("digits", knn=0.7), embeddings=np.random.default_rng(1).normal(size=(50, 8))
    )
    update_model_card(tmp_path, eval_result("uoft-cs/cifar10", knn=0.3))
    card = ModelCard.load(tmp_path / "README.md")
    knn = {
        result.dataset_type: result.metric_value for result in card.data.eval_results if "k-NN" in result.metric_name
    }
    assert knn == {"digits": 0.7, "uoft-cs/cifar10": 0.3}
    assert card.data.tags == ["lejepa", "jepa", "self-supervised", "vision", "vit"]
    text = card.text
    assert text.count(EVAL_SECTION_START) == 1
    this_model_rows = [line for line in text.splitlines() if line.startswith("| this model |")]
    assert len(this_model_rows) == 2
    assert "| digits images | train / test (1437 / 360 images) | 70.00% |" in this_model_rows[0]
    assert "| uoft-cs/cifar10 images | train / test (1437 / 360 images) | 30.00% |" in this_model_rows[1]
    assert "](embedding_spectrum.png)" in text
    assert_png(tmp_path / "embedding_spectrum.png")
    # the text outside the evaluation section is unchanged
    assert before.split(EVAL_SECTION_START)[0] == text.split(EVAL_SECTION_START)[0]
    assert before.split("## Citation")[1] == text.split("## Citation")[1]


def test_spectrum_and_effective_rank():
    rng = np.random.default_rng(0)
    isotropic = rng.normal(size=(4000, 16))
    assert 15.0 < effective_rank(isotropic) <= 16.0
    rank_one = rng.normal(size=(500, 1)) @ rng.normal(size=(1, 16))
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(np.ones((10, 4))) == 1.0
    # two equal directions: effective rank exactly 2
    two = np.zeros((4, 5))
    two[:, 0] = [1, -1, 1, -1]
    two[:, 1] = [1, 1, -1, -1]
    assert effective_rank(two) == pytest.approx(2.0)
    eigenvalues = covariance_eigenvalues(isotropic)
    assert np.all(np.diff(eigenvalues) <= 0) and eigenvalues.shape == (16,)
    np.testing.assert_allclose(eigenvalues.sum(), np.trace(np.cov(isotropic, rowvar=False)))


def test_plots_edge_cases(tmp_path):
    assert plot_loss_curves([{"step": 1, "train_runtime": 3.0}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    # validation values join their training panels; the k-NN accuracy gets its own: 4 panels of 4.5 inches
    history = [{"step": 1, "loss": 1.0, "prediction_loss": 0.5, "sigreg_loss": 9.0},
               {"step": 2, "eval_loss": 0.8, "eval_prediction_loss": 0.4, "eval_sigreg_loss": 8.0,
                "eval_knn_accuracy": 0.5}]
    with Image.open(plot_loss_curves(history, tmp_path / "with_eval.png")) as image:
        with Image.open(plot_loss_curves(history[:1], tmp_path / "train_only.png")) as train_only:
            assert image.width == pytest.approx(train_only.width * 4 / 3, rel=0.02)
    assert_png(plot_loss_curves(history[1:], tmp_path / "eval_only.png"), min_width=300)
    path = plot_loss_curves([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], tmp_path / "only_total.png")
    assert_png(path, min_width=300)
    low_rank = np.random.default_rng(0).normal(size=(30, 2)) @ np.random.default_rng(1).normal(size=(2, 64))
    assert_png(plot_embedding_spectrum(low_rank, tmp_path / "spectrum.png"))  # zero eigenvalues on a log axis


def test_documented_usage_runs_without_the_package(tmp_path, config):
    """The card's Python snippets run as written (Hub id replaced by the folder) in a fresh process where
    `modeling_lejepa` is not importable, and the pipeline's pooled output is the model's `pooler_output`."""
    folder = tmp_path / "lejepa-vit-tiny"
    torch.manual_seed(0)
    LeJepaForPreTraining(config).save_pretrained(folder)
    default_image_processor(32).save_pretrained(folder)
    build_model_card(config, folder, model_id="org/lejepa-vit-tiny")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
        tmp_path / "image.jpg"
    )
    text = (folder / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    code = "\n".join(blocks).replace("org/lejepa-vit-tiny", str(folder))
    code += (
        "\nimport numpy as np\n"
        "assert outputs.pooler_output.shape == (1, 32) and features is not None\n"
        "pooled = np.asarray(extractor('image.jpg', pool=True))\n"
        "assert np.allclose(pooled, outputs.pooler_output.numpy(), atol=1e-5), (pooled, outputs.pooler_output)\n"
        "assert 'transformers_modules' in type(model).__module__\n"
        "print('SNIPPETS OK')\n"
    )
    result = run_without_package(code, cwd=tmp_path)
    assert "SNIPPETS OK" in result.stdout
