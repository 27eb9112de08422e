"""Frozen-backbone evaluation: k-NN, linear probe, isotropy figures, and the script on the built-in digits."""

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from model_cards.card import EVAL_RESULTS_NAME
from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining, LeJepaModel
from trainer.cli import evaluate_main
from trainer.data import load_digits_dataset
from trainer.evaluation import (
    compute_embedding_metrics,
    default_image_processor,
    evaluate_embeddings,
    knn_predict,
    linear_probe_predict,
    random_init_like,
    sigreg_statistic,
)


def separable_embeddings(num_classes=4, per_class=30, dim=16, noise=0.05, seed=0):
    """Class `c` lies around the `c`-th basis direction: any sensible classifier is perfect."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    embeddings = np.eye(dim)[labels] * rng.uniform(0.5, 3.0, size=(len(labels), 1))  # scale must not matter
    return embeddings + noise * rng.normal(size=embeddings.shape), labels


@pytest.mark.parametrize("temperature", [0.07, 0.0])
def test_knn_is_perfect_on_separable_embeddings(temperature):
    train, train_labels = separable_embeddings(seed=0)
    test, test_labels = separable_embeddings(seed=1)
    predictions = knn_predict(train, train_labels, test, k=20, temperature=temperature)
    assert np.mean(predictions == test_labels) == 1.0


def test_knn_majority_matches_scikit_learn():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(200, 8)), rng.normal(size=(100, 8))
    train_labels = (train[:, 0] + 0.5 * rng.normal(size=200) > 0).astype(int)  # two classes, odd k: no ties
    reference = KNeighborsClassifier(n_neighbors=7, metric="cosine", algorithm="brute").fit(train, train_labels)
    np.testing.assert_array_equal(knn_predict(train, train_labels, test, k=7, temperature=0), reference.predict(test))


def test_knn_temperature_weighting_by_hand():
    """One very similar neighbour of class 0 outvotes two weakly similar ones of class 1 only with weighting:
    exp(0.99 / 0.07) = 1.4e6 > 2 exp(0.5 / 0.07) = 2.5e3."""
    angle = np.arccos([0.99, 0.5, 0.5])
    train = np.stack([np.cos(angle), np.sin(angle) * np.array([1, 1, -1])], axis=1)
    train = np.vstack([train, [[-1.0, 0.0]]])  # a far point of class 0, outside the 3 neighbours
    labels = np.array([0, 1, 1, 0])
    query = np.array([[1.0, 0.0]])
    assert knn_predict(train, labels, query, k=3, temperature=0.07)[0] == 0
    assert knn_predict(train, labels, query, k=3, temperature=None)[0] == 1
    assert knn_predict(train, labels, query, k=100, temperature=None)[0] == 0  # k capped at N: 2 votes to 2, tie -> 0


@pytest.mark.parametrize("method", ["logistic_regression", "layernorm_linear"])
def test_linear_probes_on_separable_embeddings(method):
    train, train_labels = separable_embeddings(seed=0)
    test, test_labels = separable_embeddings(seed=1)
    predictions = linear_probe_predict(train, train_labels, test, method=method, epochs=30)
    assert np.mean(predictions == test_labels) == 1.0
    with pytest.raises(ValueError, match="Unknown linear probe"):
        linear_probe_predict(train, train_labels, test, method="svm")


def test_sigreg_statistic_equals_the_float64_reference():
    """The statistic of each random direction (numpy's `default_rng(seed)`, normalised) written from its definition."""
    from test_sigreg import epps_pulley_reference

    embeddings = np.random.default_rng(0).normal(size=(256, 12)).astype(np.float32)
    directions = np.random.default_rng(5).standard_normal((12, 64))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)
    projected = embeddings.astype(np.float64) @ directions
    expected = np.mean([epps_pulley_reference(projected[:, m]) for m in range(64)])
    assert sigreg_statistic(embeddings, num_slices=64, seed=5) == pytest.approx(expected, rel=1e-10)
    # Gaussian embeddings score low, collapsed ones high
    collapsed = np.zeros_like(embeddings)
    assert sigreg_statistic(embeddings) < 2.0 < 10.0 < sigreg_statistic(collapsed)


def test_metrics_with_string_labels():
    train, train_labels = separable_embeddings(seed=0)
    test, test_labels = separable_embeddings(seed=1)
    names = np.array(["cat", "dog", "eel", "fox"])
    metrics = compute_embedding_metrics(train, names[train_labels], test, names[test_labels], knn_k=5)
    assert metrics["knn_accuracy"] == 1.0 and metrics["linear_probe_accuracy"] == 1.0
    assert metrics["num_classes"] == 4 and metrics["embedding_size"] == 16
    assert 1.0 <= metrics["effective_rank"] <= 16


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset(image_size=32, seed=0, test_fraction=0.2)


def test_evaluate_random_model_on_digits(digits):
    torch.manual_seed(0)
    model = LeJepaModel(LeJepaConfig.from_preset("vit-tiny-test")).train()
    results = evaluate_embeddings(
        model, digits["train"], digits["test"], max_train_samples=300, max_eval_samples=100, sigreg_num_slices=128
    )
    assert model.training  # the mode is restored
    assert results["num_train_samples"] == 300 and results["num_eval_samples"] == 100
    assert results["embedding_size"] == 32 and results["num_classes"] == 10
    for key in ("knn_accuracy", "linear_probe_accuracy"):
        assert 0.0 <= results[key] <= 1.0
    assert results["knn_accuracy"] > 0.2  # even random features beat chance (0.1) on digits
    assert 1.0 <= results["effective_rank"] <= 32
    assert np.isfinite(results["sigreg_statistic"]) and results["sigreg_statistic"] >= 0
    json.dumps(results)  # serialisable as it is


def test_random_init_like_has_same_shape_and_new_weights():
    torch.manual_seed(0)
    model = LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test"))
    baseline = random_init_like(model, seed=1)
    assert isinstance(baseline, LeJepaModel)
    own = dict(model.lejepa.named_parameters())
    assert {name: p.shape for name, p in baseline.named_parameters()} == {name: p.shape for name, p in own.items()}
    assert not torch.equal(baseline.backbone.embeddings.cls_token, model.lejepa.backbone.embeddings.cls_token)
    assert torch.equal(
        random_init_like(model, seed=1).backbone.embeddings.cls_token, baseline.backbone.embeddings.cls_token
    )


def test_script_writes_json_and_model_card(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "checkpoint"
    LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test")).save_pretrained(checkpoint)
    default_image_processor(32).save_pretrained(checkpoint)
    common = ["--max_train_samples", "200", "--max_eval_samples", "80", "--sigreg_num_slices", "64"]
    results = evaluate_main(
        ["--model_name_or_path", str(checkpoint), "--random_init_baseline", "--update_model_card", *common]
    )
    written = json.loads((checkpoint / "eval_results.json").read_text())  # default: next to the checkpoint
    assert written == json.loads(json.dumps(results))
    assert written["dataset_name"] == "photos" and written["eval_split"] == "test"  # the built-in default
    assert 0 <= written["knn_accuracy"] <= 1 and 0 <= written["linear_probe_accuracy"] <= 1
    assert 1 <= written["effective_rank"] <= 32
    assert set(written["random_init_baseline"]) == {
        "knn_accuracy",
        "linear_probe_accuracy",
        "effective_rank",
        "sigreg_statistic",
        "embedding_size",
    }
    assert (checkpoint / "embedding_spectrum.png").is_file()
    # no card before: one is built, with the results in the metadata and the body
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert {r.metric_value for r in card.data.eval_results} == {
        round(written["knn_accuracy"], 6),
        round(written["linear_probe_accuracy"], 6),
    }
    assert "random init, same architecture" in card.text
    assert json.loads((checkpoint / EVAL_RESULTS_NAME).read_text())[0]["knn_accuracy"] == written["knn_accuracy"]

    # a random model of a preset, the plain majority vote, the torch probe, results to a chosen file
    output_file = tmp_path / "elsewhere" / "random.json"
    args = ["--model_preset", "vit-tiny-test", "--knn_temperature", "0", "--linear_probe", "layernorm_linear"]
    args += ["--linear_probe_epochs", "5", "--output_file", str(output_file), *common]
    results = evaluate_main(args)
    assert json.loads(output_file.read_text())["knn_temperature"] == 0.0
    assert results["linear_probe"] == "layernorm_linear" and 0 <= results["linear_probe_accuracy"] <= 1
    assert (output_file.parent / "embedding_spectrum.png").is_file()
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_main(common)


def test_scripts_are_the_installed_commands():
    """`run_evaluation.py` and `export_backbone.py` are the `lejepa-evaluate` and `lejepa-export-backbone` commands of
    `setup.cfg`, whose `main` functions live in the installed package."""
    import configparser
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    lines = setup["options.entry_points"]["console_scripts"].strip().splitlines()
    commands = dict(line.replace(" ", "").split("=") for line in lines)
    assert commands == {
        "lejepa-evaluate": "trainer.cli:evaluate_command",
        "lejepa-export-backbone": "trainer.cli:export_command",
    }
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for script, options in (("run_evaluation.py", ("--model_name_or_path", "--knn_k", "--linear_probe")),
                            ("export_backbone.py", ("checkpoint_dir", "--model_id", "--verify"))):
        result = subprocess.run([sys.executable, str(REPO_ROOT / script), "--help"], env=env, cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert all(option in result.stdout for option in options), result.stdout
