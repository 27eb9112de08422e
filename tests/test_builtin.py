"""
The built-in datasets and the three-row evaluation of the first command: the photos load offline and
deterministically, the raw-pixel baseline goes through the same k-NN and probe code as the models, and a short run of
the default `python run_pretraining.py` prints the three rows and writes them into the model card.
"""

import json
import os
import socket
import subprocess
import sys

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

from modeling_lejepa import LeJepaConfig, LeJepaModel
from trainer import BUILTIN_DATASETS, evaluation, load_builtin_dataset, load_photos_dataset
from trainer.cli import evaluate_main
from trainer.data import BUILTIN_PHOTOS
from trainer.evaluation import (
    RawPixelEmbedding,
    default_image_processor,
    evaluate_embeddings,
    extract_embeddings,
    raw_pixels_like,
)
from trainer.recipes import BUILTIN_RECIPES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"image_size": 16, "train_crops_per_photo": 6, "test_crops_per_photo": 3}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the built-in data must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _encoded(dataset: datasets.Dataset) -> list[bytes]:
    return [row["bytes"] for row in dataset.cast_column("image", datasets.Image(decode=False))["image"]]


# ---------------------------------------------------------------------------------------------------------------------
# The photos
# ---------------------------------------------------------------------------------------------------------------------


def test_photos_load_offline_and_deterministically(no_network):
    photos = load_photos_dataset(**SMALL, seed=0)
    train, test = photos["train"], photos["test"]
    names = [name for _, _, name in BUILTIN_PHOTOS]
    assert train.features["label"].names == names and len(names) == 17
    assert len(train) == 17 * 6 and len(test) == 17 * 3
    assert np.bincount(train["label"], minlength=17).tolist() == [6] * 17
    assert np.bincount(test["label"], minlength=17).tolist() == [3] * 17
    assert train["label"][:17] != sorted(train["label"][:17])  # mixed, so that a prefix is a fair subset
    image = train[0]["image"]
    assert image.mode == "RGB" and image.size == (16, 16)
    colourful = [np.asarray(row["image"], dtype=np.int16) for row in test.select(range(10))]
    assert any(np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 10 for pixels in colourful)  # real colour photos

    again = load_photos_dataset(**SMALL, seed=0)
    assert again["train"]["label"] == train["label"] and again["test"]["label"] == test["label"]
    assert _encoded(again["train"]) == _encoded(train) and _encoded(again["test"]) == _encoded(test)
    other = load_photos_dataset(**SMALL, seed=1)
    assert _encoded(other["test"]) != _encoded(test)


def test_photo_test_crops_come_from_held_out_cells(monkeypatch):
    """Every box is inside one cell, and no test box overlaps a training box of the same photo."""
    from trainer.data import builtin

    boxes = []
    original = builtin._photo_crop

    def record(cell, rng, scale):
        box = original(cell, rng, scale)
        boxes.append(box)
        left, top, right, bottom = box
        assert cell[0] <= left < right <= cell[2] and cell[1] <= top < bottom <= cell[3]
        return box

    monkeypatch.setattr(builtin, "_photo_crop", record)
    load_photos_dataset(**SMALL)
    per_split = 17 * 6
    train_boxes, test_boxes = boxes[:per_split], boxes[per_split:]
    for photo in range(17):
        for a in train_boxes[photo * 6 : photo * 6 + 6]:
            for b in test_boxes[photo * 3 : photo * 3 + 3]:
                overlap = min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])
                assert not overlap, (photo, a, b)


def test_builtin_datasets_and_errors():
    assert set(BUILTIN_DATASETS) == {"photos", "digits"}
    digits = load_builtin_dataset("digits", image_size=8)
    assert digits["train"][0]["image"].size == (8, 8)
    with pytest.raises(ValueError, match="Unknown built-in dataset 'cifar'"):
        load_builtin_dataset("cifar")
    with pytest.raises(ValueError, match="test_cells_per_photo"):
        load_photos_dataset(grid_size=2, test_cells_per_photo=4)
    with pytest.raises(ValueError, match="crop_scale"):
        load_photos_dataset(crop_scale=(0.5, 0.2))


def test_missing_photo_package_names_the_fix(monkeypatch):
    from trainer.data import builtin

    monkeypatch.setattr(builtin, "BUILTIN_PHOTOS", (("no_such_package_xyz", "a.png", "a"),))
    with pytest.raises(FileNotFoundError, match="pip install no_such_package_xyz.*--builtin_dataset digits"):
        load_photos_dataset(**SMALL)


def test_photos_task_on_other_photo_files(tmp_path):
    """`photo_files`: one class per file, named after its stem, every crop cut from its own photo (each photo here
    a different flat colour, so a crop's colour names its photo)."""
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    files = []
    for name, colour in colours.items():
        path = tmp_path / f"{name}.png"
        PIL.Image.new("RGB", (48, 40), colour).save(path)
        files.append(path)
    photos = load_photos_dataset(**SMALL, photo_files=files)
    assert photos["train"].features["label"].names == list(colours)
    for split in ("train", "test"):
        for row in photos[split]:
            expected = colours[photos[split].features["label"].int2str(row["label"])]
            assert np.abs(np.asarray(row["image"], dtype=int) - expected).max() <= 1
    with pytest.raises(ValueError, match="distinct file names"):
        load_photos_dataset(**SMALL, photo_files=[files[0], files[0]])


# ---------------------------------------------------------------------------------------------------------------------
# The raw-pixel baseline
# ---------------------------------------------------------------------------------------------------------------------


def test_raw_pixel_baseline_goes_through_the_same_knn_and_probe(monkeypatch):
    photos = load_photos_dataset(**SMALL)
    train, test = photos["train"], photos["test"]
    processor = default_image_processor(8)
    calls = []
    knn, probe = evaluation.knn_predict, evaluation.linear_probe_predict
    metrics = evaluation.compute_embedding_metrics  # the k-NN and the probe, through the evaluate module

    def metrics_spy(train_embeddings, train_labels, eval_embeddings, eval_labels, **kwargs):
        calls.append(("metrics", train_embeddings, eval_embeddings))
        return metrics(train_embeddings, train_labels, eval_embeddings, eval_labels, **kwargs)

    monkeypatch.setattr(evaluation, "compute_embedding_metrics", metrics_spy)
    raw = evaluate_embeddings(RawPixelEmbedding(8), train, test, processor)
    torch.manual_seed(0)
    model = LeJepaModel(LeJepaConfig.from_preset("vit-tiny-test", global_image_size=8))
    evaluate_embeddings(model, train, test, processor)
    assert [name for name, *_ in calls] == ["metrics", "metrics"]  # the same protocol for both rows

    # Independent reference: the raw-pixel embedding is the processor's output, flattened.
    def pixels(split):
        return processor(images=list(split["image"]), return_tensors="np")["pixel_values"].reshape(len(split), -1)

    expected_train, expected_test = pixels(train), pixels(test)
    _, train_embeddings, query_embeddings = calls[0]
    np.testing.assert_allclose(train_embeddings, expected_train, rtol=0, atol=1e-6)
    np.testing.assert_allclose(query_embeddings, expected_test, rtol=0, atol=1e-6)
    labels, test_labels = np.asarray(train["label"]), np.asarray(test["label"])
    assert raw["knn_accuracy"] == np.mean(knn(expected_train, labels, expected_test, num_classes=17) == test_labels)
    assert raw["linear_probe_accuracy"] == np.mean(probe(expected_train, labels, expected_test) == test_labels)
    assert raw["embedding_size"] == 3 * 8 * 8 and 0.0 < raw["knn_accuracy"] <= 1.0


def test_raw_pixels_like_uses_the_model_resolution():
    model = LeJepaModel(LeJepaConfig.from_preset("vit-tiny-test", global_image_size=24))
    baseline = raw_pixels_like(model)
    assert isinstance(baseline, RawPixelEmbedding) and list(baseline.parameters()) == []
    digits = load_builtin_dataset("digits", image_size=8)["test"].select(range(5))
    embeddings, labels = extract_embeddings(baseline, digits)  # default processor at the model's 24 px
    assert embeddings.shape == (5, 3 * 24 * 24) and labels.tolist() == digits["label"]
    with pytest.raises(ValueError, match="`image_size` must be positive"):
        RawPixelEmbedding(0)


def test_run_evaluation_adds_both_baselines_to_results_and_card(tmp_path):
    from model_cards import build_model_card

    checkpoint = tmp_path / "model"
    config = LeJepaConfig.from_preset("vit-tiny-test", global_image_size=16)
    LeJepaModel(config).save_pretrained(checkpoint)
    build_model_card(config, checkpoint)
    results = evaluate_main([
        "--model_name_or_path", str(checkpoint), "--builtin_dataset", "digits", "--max_train_samples", "200",
        "--max_eval_samples", "100", "--random_init_baseline", "--raw_pixel_baseline", "--update_model_card",
    ])
    assert results["dataset_name"] == "digits"
    assert results["raw_pixel_baseline"]["embedding_size"] == 3 * 16 * 16
    assert results["random_init_baseline"]["embedding_size"] == results["embedding_size"] == 32
    card = (checkpoint / "README.md").read_text()
    rows = [line for line in card.splitlines() if line.startswith("| ") and "digits" in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| this model", "| random init, same architecture", "| raw pixels (input resolution)"
    ]
    raw_knn = f"{100 * results['raw_pixel_baseline']['knn_accuracy']:.1f}"
    assert raw_knn in rows[2] and "/ 768" in rows[2]
    assert "**Raw pixels**" in card


def test_small_images_preset_trains_on_a_folder(tmp_path, monkeypatch):
    """`--train_dir ... --model_preset vit-small-images`: a folder of 64 px images trains a step with the preset's
    model, and the saved model is the preset's (the built-in photos recipe's model)."""
    import run_pretraining

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(8):
        PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    output_dir = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "run_pretraining.py", "--output_dir", str(output_dir), "--train_dir", str(folder), "--model_preset",
        "vit-small-images", "--max_steps", "1", "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--logging_steps", "1",
        "--cache_dir", str(tmp_path / "cache"),
    ])
    run_pretraining.main()
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert history[0]["step"] == 1 and np.isfinite(history[0]["loss"])
    saved = LeJepaConfig.from_pretrained(output_dir)
    preset = LeJepaConfig.from_preset("vit-small-images")
    assert saved.backbone_config.to_dict() == preset.backbone_config.to_dict()
    assert (saved.global_image_size, saved.local_image_size, saved.num_local_views) == (32, 16, 2)
    assert BUILTIN_RECIPES["photos"].preset == "vit-small-images"


# ---------------------------------------------------------------------------------------------------------------------
# The first command, shortened
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_default_first_command_prints_three_rows(tmp_path):
    """`python run_pretraining.py --output_dir DIR`, the README's first command, with 3 steps instead of 600."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO_ROOT}
    command = [
        sys.executable, "run_pretraining.py", "--output_dir", str(tmp_path / "photos"), "--max_steps", "3",
        "--per_device_train_batch_size", "32", "--dataloader_num_workers", "0", "--report_to", "none",
        "--disable_tqdm", "true",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(BUILTIN_DATASETS["photos"].description))
    assert "544 test images" in lines[header]
    rows = lines[header + 1 : header + 4]
    assert [row.split()[0] for row in rows] == ["LeJEPA", "random", "raw"]
    assert all("k-NN 0." in row and "linear probe 0." in row for row in rows)
    card = (tmp_path / "photos" / "README.md").read_text()
    assert "| raw pixels (input resolution) |" in card and "| random init, same architecture |" in card


def test_covariance_eigenvalues_with_fewer_samples_than_dimensions():
    """The Gram-matrix path (N < D, as for raw pixels) gives the eigenvalues of the D x D covariance."""
    from model_cards.plots import covariance_eigenvalues

    x = np.random.default_rng(0).normal(size=(12, 40)) * np.linspace(0.1, 3.0, 40)
    centred = x - x.mean(axis=0)
    reference = np.sort(np.linalg.eigvalsh(centred.T @ centred / 11))[::-1]
    eigenvalues = covariance_eigenvalues(x)
    assert eigenvalues.shape == (40,)
    np.testing.assert_allclose(eigenvalues, np.clip(reference, 0, None), rtol=1e-9, atol=1e-9)
