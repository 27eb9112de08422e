"""The validation loss: fixed views and directions, the same value at every evaluation, with 1 or 2 processes, after a
resume and from the stand-alone script; best-checkpoint selection on it; the evaluation-time k-NN accuracy."""

import json
import os
import subprocess
import sys

import datasets
import pytest
import torch
from conftest import REPO_ROOT
from test_distributed import launch
from transformers import TrainerCallback

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from trainer import EVAL_SIGREG_SEED, LeJepaTrainer, LeJepaTrainingArguments
from trainer.data import (
    MultiCropCollator,
    MultiCropTransform,
    load_digits_dataset,
    prepare_pretraining_dataset,
    prepare_validation_dataset,
    split_validation_dataset,
    take_validation_examples,
)
from trainer.validation import validation_batches

CONFIG = {"num_local_views": 2}


@pytest.fixture(scope="module")
def digits():
    return load_digits_dataset()


def make_trainer(output_dir, digits, model_seed: int = 0, num_validation: int = 20, **training) -> LeJepaTrainer:
    config = LeJepaConfig.from_preset("vit-tiny-test", **CONFIG)
    torch.manual_seed(model_seed)
    model = LeJepaForPreTraining(config)
    transform = MultiCropTransform.from_lejepa_config(config, hue=0.0, saturation=0.0)  # grey digits: skip HSV
    arguments = {
        "output_dir": str(output_dir), "use_cpu": True, "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 8, "report_to": "none", "dataloader_num_workers": 0, "learning_rate": 1e-2,
        "warmup_steps": 0, "save_strategy": "no", "logging_steps": 1, "seed": 0, "disable_tqdm": True,
        **training,
    }
    return LeJepaTrainer(
        model=model,
        args=LeJepaTrainingArguments(**arguments),
        train_dataset=prepare_pretraining_dataset(digits["train"].select(range(64)), transform, "image"),
        eval_dataset=prepare_validation_dataset(digits["test"].select(range(num_validation)), transform, "image"),
        data_collator=MultiCropCollator(return_labels=False),
    )


def logged_eval_losses(trainer: LeJepaTrainer) -> dict[int, float]:
    return {entry["step"]: entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry}


def test_validation_views_are_fixed_by_index(digits):
    config = LeJepaConfig.from_preset("vit-tiny-test", **CONFIG)
    validation = prepare_validation_dataset(
        digits["test"].select(range(6)), MultiCropTransform.from_lejepa_config(config), "image", "label"
    )
    rng_state = torch.get_rng_state()
    single = validation[3]
    assert torch.equal(torch.get_rng_state(), rng_state), "the caller's random state changed"
    batch = validation[1:5]
    assert torch.equal(single["pixel_values"], batch["pixel_values"][2])
    assert torch.equal(single["local_pixel_values"], batch["local_pixel_values"][2])
    assert single["labels"] == digits["test"][3]["label"]
    # the views are random crops, seeded per image: two images' views differ, and so do the views of one image
    assert not torch.equal(batch["pixel_values"][0], batch["pixel_values"][1])
    assert not torch.equal(single["pixel_values"][0], single["pixel_values"][1])
    # a DataLoader worker makes the same views
    loader = torch.utils.data.DataLoader(validation, batch_size=3, num_workers=1, collate_fn=MultiCropCollator())
    first = next(iter(loader))
    assert torch.equal(first["pixel_values"][0], validation[0]["pixel_values"])


def test_streamed_and_held_out_validation_sets_are_fixed(digits):
    small = digits["test"].select(range(12))
    stream = small.to_iterable_dataset(num_shards=3).shuffle(seed=7, buffer_size=4)
    first = take_validation_examples(stream, 5, "image")
    again = take_validation_examples(stream, 5, "image")
    assert isinstance(first, datasets.Dataset) and len(first) == 5
    assert first["label"] == again["label"] and first[0]["image"] == again[0]["image"]
    assert first.features["image"] == datasets.Image(decode=False)  # kept as bytes: decoded by the transform
    with pytest.raises(ValueError, match="max_eval_samples"):
        take_validation_examples(stream, None, "image")
    with pytest.raises(ValueError, match="stream cannot be split"):
        split_validation_dataset(stream, "image", train_val_split=0.2)

    train, held_out = split_validation_dataset(small, "image", train_val_split=0.25, seed=3)
    assert (len(train), len(held_out)) == (9, 3)
    assert split_validation_dataset(small, "image", train_val_split=0.25, seed=3)[1]["label"] == held_out["label"]
    # a capped validation set is the same sample whatever the run's seed, and not simply the first rows
    _, capped = split_validation_dataset(digits["train"], "image", digits["test"], max_eval_samples=50, seed=1)
    _, capped_again = split_validation_dataset(digits["train"], "image", digits["test"], max_eval_samples=50, seed=2)
    assert capped["label"] == capped_again["label"] != digits["test"]["label"][:50]
    with pytest.raises(ValueError, match="not both"):
        split_validation_dataset(small, "image", small, train_val_split=0.5)


@pytest.mark.parametrize("num_examples", [16, 20, 21, 3])
def test_validation_blocks_do_not_depend_on_the_number_of_processes(num_examples):
    one = validation_batches(num_examples, 8)
    assert [i for batch in one for i in batch] == list(range(num_examples))
    for world in (2, 3):
        per_rank = [validation_batches(num_examples, 8, world, rank) for rank in range(world)]
        assert len({len(batches) for batches in per_rank}) == 1, "every process makes the same number of passes"
        blocks = [sorted(i for batches in per_rank for i in batches[j]) for j in range(len(per_rank[0]))]
        expected = [block for block in one if len(block) >= world]  # a last block smaller than the world is left out
        assert blocks == expected
    with pytest.raises(ValueError, match="at least one image per process"):
        validation_batches(10, 2, num_processes=3)


def test_eval_loss_is_deterministic_and_equals_the_blockwise_definition(tmp_path, digits):
    trainer = make_trainer(tmp_path, digits)
    model = trainer.model
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.train()
    first, second = trainer.evaluate(), trainer.evaluate()
    for key in ("eval_loss", "eval_prediction_loss", "eval_sigreg_loss"):
        assert first[key] == second[key], key
    assert model.training, "evaluate() must restore the training mode"
    for name, buffer in model.named_buffers():
        assert torch.equal(buffer, buffers[name]), f"{name} changed in evaluation"

    # Reference: SIGReg on each block of 8 consecutive images (8, 8, 4), eval mode, fixed directions, terms
    # averaged over images.
    collate = MultiCropCollator(return_labels=False)
    totals = torch.zeros(3, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        for start in (0, 8, 16):
            rows = [trainer.eval_dataset[i] for i in range(start, min(start + 8, 20))]
            batch = collate(rows)
            outputs = model(batch["pixel_values"], batch["local_pixel_values"], step=EVAL_SIGREG_SEED)
            terms = torch.stack([outputs.loss, outputs.prediction_loss, outputs.sigreg_loss]).double()
            totals += terms * len(rows)
    model.train()
    reference = (totals / 20).tolist()
    actual = [first["eval_loss"], first["eval_prediction_loss"], first["eval_sigreg_loss"]]
    torch.testing.assert_close(actual, reference, rtol=1e-6, atol=0)
    lambd = model.config.lambda_sigreg
    expected_total = (1 - lambd) * first["eval_prediction_loss"] + lambd * first["eval_sigreg_loss"]
    assert first["eval_loss"] == pytest.approx(expected_total, rel=1e-6)  # the model sums in float32


class EvaluateBeforeFirstStep(TrainerCallback):
    """Evaluates once, at the beginning of the first step of `train()` (after a resume: the checkpoint's weights,
    random states and step are loaded, and nothing is trained yet)."""

    def __init__(self):
        self.trainer, self.eval_loss = None, None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.eval_loss is None:
            self.eval_loss = self.trainer.evaluate()["eval_loss"]


def test_eval_loss_does_not_change_when_training_resumes(tmp_path, digits):
    common = {"eval_strategy": "steps", "eval_steps": 2, "save_strategy": "steps", "save_steps": 2}
    trainer = make_trainer(tmp_path, digits, max_steps=2, **common)
    trainer.train()
    logged = logged_eval_losses(trainer)[2]
    # a new trainer, with other initial weights, resumed from the checkpoint of step 2 and evaluated before step 3
    resumed = make_trainer(tmp_path, digits, model_seed=1, max_steps=3, **common)
    assert resumed.evaluate()["eval_loss"] != logged
    callback = EvaluateBeforeFirstStep()
    callback.trainer = resumed
    resumed.add_callback(callback)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert resumed.state.global_step == 3
    assert callback.eval_loss == logged


def test_best_checkpoint_is_the_lowest_logged_eval_loss(tmp_path, digits):
    trainer = make_trainer(
        tmp_path, digits, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        save_total_limit=None, load_best_model_at_end=True, metric_for_best_model="eval_loss",
    )
    trainer.train()
    logged = logged_eval_losses(trainer)
    assert sorted(logged) == [2, 4, 6]
    best_step = min(logged, key=logged.get)
    assert trainer.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{best_step}")
    assert trainer.state.best_metric == logged[best_step]
    best = LeJepaForPreTraining.from_pretrained(trainer.state.best_model_checkpoint)
    final = trainer.model.state_dict()
    for name, tensor in best.state_dict().items():
        assert torch.equal(final[name], tensor), f"{name} is not the best checkpoint's"
    assert trainer.evaluate()["eval_loss"] == logged[best_step]


@pytest.mark.slow
def test_two_processes_give_the_single_process_eval_loss(tmp_path):
    launch("evaluate", tmp_path / "one", 1)
    launch("evaluate", tmp_path / "two", 2)
    one = json.loads((tmp_path / "one" / "eval.json").read_text())
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert one["eval_sigreg_loss"] > 0 and one["eval_prediction_loss"] > 0
    for key in ("eval_loss", "eval_prediction_loss", "eval_sigreg_loss"):
        # float32 ECF sums all-reduced in another order
        assert two[key] == pytest.approx(one[key], rel=1e-5), key


def run_script(*args: str, cwd) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, str(REPO_ROOT / "run_pretraining.py"), *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-5000:]


@pytest.mark.slow
def test_standalone_evaluation_and_knn_match_training_and_run_evaluation(tmp_path):
    from trainer.cli import evaluate_main

    tiny = ["--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "90", "--dataloader_num_workers",
            "0", "--report_to", "none", "--disable_tqdm", "True", "--config_overrides", "num_local_views=2"]
    run_script(
        "--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
        "--save_steps", "2", "--builtin_dataset", "digits", "--builtin_evaluation", "False", *tiny, cwd=tmp_path,
    )
    checkpoint = tmp_path / "run" / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    logged = next(entry for entry in state["log_history"] if "eval_loss" in entry)
    assert 0.0 <= logged["eval_knn_accuracy"] <= 1.0

    run_script(
        "--model_name_or_path", str(checkpoint), "--do_train", "False", "--do_eval", "--builtin_dataset", "digits",
        "--output_dir", str(tmp_path / "alone"), *tiny, cwd=tmp_path,
    )
    alone = json.loads((tmp_path / "alone" / "eval_results.json").read_text())
    for key in ("eval_loss", "eval_prediction_loss", "eval_sigreg_loss", "eval_knn_accuracy"):
        assert alone[key] == pytest.approx(logged[key], rel=1e-6, abs=0), key
    assert not (tmp_path / "alone" / "model.safetensors").exists(), "evaluating alone must not save a model"

    # the evaluation script's k-NN on the same images: the built-in digits' fixed train -> test split, the
    # checkpoint's image processor
    results = evaluate_main(
        ["--model_name_or_path", str(checkpoint), "--builtin_dataset", "digits", "--output_dir",
         str(tmp_path / "eval")]
    )
    assert results["knn_accuracy"] == logged["eval_knn_accuracy"]
