"""LeJepaTrainer: logged loss terms, window averaging, report_to backends and the online probe."""

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from trainer import LeJepaTrainer


def views(batch):
    out = {"pixel_values": [], "local_pixel_values": [], "labels": []}
    for index in batch["index"]:
        generator = torch.Generator().manual_seed(index)
        out["pixel_values"].append(torch.randn(2, 3, 32, 32, generator=generator))
        out["local_pixel_values"].append(torch.randn(2, 3, 16, 16, generator=generator))
        out["labels"].append(index % 3)
    return out


def collate(examples, with_labels=False):
    batch = {key: torch.stack([e[key] for e in examples]) for key in ("pixel_values", "local_pixel_values")}
    if with_labels:
        batch["labels"] = torch.tensor([e["labels"] for e in examples])
    return batch


def train(tmp_path, logging_steps=1, probe=False, report_to="none", max_steps=6):
    torch.manual_seed(0)
    model = LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test", num_local_views=2))
    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, max_steps=max_steps, per_device_train_batch_size=8,
        logging_steps=logging_steps, report_to=report_to, remove_unused_columns=False, save_strategy="no",
        dataloader_num_workers=0, seed=0, learning_rate=1e-3,
    )
    trainer = LeJepaTrainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"index": list(range(48))}).with_transform(views),
        data_collator=lambda examples: collate(examples, with_labels=probe), probe_num_labels=3 if probe else None,
    )
    trainer.train()
    return trainer, [entry for entry in trainer.state.log_history if "prediction_loss" in entry]


def test_loss_terms_logged_and_averaged_over_the_window(tmp_path):
    _, every_step = train(tmp_path / "a", logging_steps=1)
    _, every_third = train(tmp_path / "b", logging_steps=3)
    assert [e["step"] for e in every_step] == [1, 2, 3, 4, 5, 6] and [e["step"] for e in every_third] == [3, 6]
    lambd = 0.05
    for entry in every_step:  # the logged total is the convex combination of the logged terms
        expected = (1 - lambd) * entry["prediction_loss"] + lambd * entry["sigreg_loss"]
        assert entry["loss"] == pytest.approx(expected, rel=1e-4)
    for window, entry in zip((every_step[:3], every_step[3:]), every_third):
        for key in ("loss", "prediction_loss", "sigreg_loss"):
            assert entry[key] == pytest.approx(sum(e[key] for e in window) / 3, rel=1e-4), key


def test_tensorboard_receives_the_loss_terms(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "runs"))
    train(tmp_path, logging_steps=2, report_to="tensorboard", max_steps=4)
    event_dirs = {p.parent for p in tmp_path.rglob("events.out.tfevents.*")}
    assert event_dirs
    tags = set()
    for event_dir in event_dirs:
        accumulator = EventAccumulator(str(event_dir))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/prediction_loss", "train/sigreg_loss"} <= tags


def test_online_probe_learns_without_changing_pretraining(tmp_path):
    trainer, with_probe = train(tmp_path / "probe", probe=True)
    _, without_probe = train(tmp_path / "plain", probe=False)
    # the probe trains on detached embeddings in its own parameter group: the pretraining run is unchanged
    for a, b in zip(with_probe, without_probe):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert all(0.0 <= e["probe_accuracy"] <= 1.0 and e["probe_loss"] > 0 for e in with_probe)
    probe_group = trainer.optimizer.param_groups[-1]
    assert {id(p) for p in probe_group["params"]} == {id(p) for p in trainer.probe.parameters()}
    assert probe_group["weight_decay"] == 0.0


def test_invalid_nonfinite_policy():
    with pytest.raises(ValueError, match="on_nonfinite_loss"):
        LeJepaTrainer(model=LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test")),
                      args=TrainingArguments(output_dir="unused", use_cpu=True, report_to="none"),
                      on_nonfinite_loss="ignore")


def test_no_pin_memory_without_an_accelerator(tmp_path):
    """PyTorch warns at every DataLoader iterator that pinning needs an accelerator; `TrainingArguments` turns pinning
    off only with `use_cpu`, `LeJepaTrainingArguments` wherever there is no accelerator."""
    import warnings

    from trainer import LeJepaTrainingArguments

    args = LeJepaTrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=8,
                                   report_to="none", save_strategy="no", dataloader_num_workers=0)
    assert args.dataloader_pin_memory is torch.accelerator.is_available()
    unpinned = LeJepaTrainingArguments(output_dir=str(tmp_path), dataloader_pin_memory=False)
    assert unpinned.dataloader_pin_memory is False
    trainer = LeJepaTrainer(
        model=LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test", num_local_views=2)), args=args,
        train_dataset=Dataset.from_dict({"index": list(range(8))}).with_transform(views), data_collator=collate,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "pin_memory" in str(w.message)]
