"""LeJepaTrainer: logged loss terms, window averaging, report_to backends and the online probe."""

import functools

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


def class_colour(label: int, size: int) -> torch.Tensor:
    """A (3, size, size) image of the colour of class `label`: its channel at +1, the other two at -1."""
    colour = -torch.ones(3, 1, 1)
    colour[label] = 1.0
    return colour.expand(3, size, size)


def coloured_views(shuffled_labels: bool):
    """Views of image `index`: the colour of its class (`index % 3`) plus noise. With `shuffled_labels` the labels
    are a fixed random permutation of the classes, independent of the images (the control)."""
    permutation = torch.randperm(PROBE_IMAGES, generator=torch.Generator().manual_seed(1))

    def transform(batch):
        out = {"pixel_values": [], "local_pixel_values": [], "labels": []}
        for index in batch["index"]:
            generator = torch.Generator().manual_seed(index)
            label = index % 3
            out["pixel_values"].append(class_colour(label, 32) + 0.5 * torch.randn(2, 3, 32, 32, generator=generator))
            out["local_pixel_values"].append(
                class_colour(label, 16) + 0.5 * torch.randn(2, 3, 16, 16, generator=generator)
            )
            out["labels"].append(int(permutation[index]) % 3 if shuffled_labels else label)
        return out

    return transform


PROBE_IMAGES = 192  # 12 steps of 16: every batch is new to the probe when its accuracy is logged


def test_online_probe_learns_separable_labels_and_not_shuffled_ones(tmp_path):
    """The online probe (LayerNorm + Linear on the detached embedding) of a frozen random backbone (learning rate 0;
    the probe has its own), on images whose class shows as their colour (which the tiny random ViT's embedding keeps;
    spatial patterns it does not). Its logged accuracy, measured on each batch before the probe trains on it (one
    pass over the data), climbs from chance to near 1, while the same images with shuffled labels stay near chance
    (1/3). Measured: 0.97 over the last 4 steps, 0.34 for the control."""
    runs = {}
    for name, shuffled in (("separable", False), ("shuffled", True)):
        torch.manual_seed(0)
        model = LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test", num_local_views=2))
        args = TrainingArguments(
            output_dir=str(tmp_path / name), use_cpu=True, max_steps=PROBE_IMAGES // 16,
            per_device_train_batch_size=16, logging_steps=1, report_to="none", remove_unused_columns=False,
            save_strategy="no", dataloader_num_workers=0, seed=0, learning_rate=0.0, lr_scheduler_type="constant",
        )
        dataset = Dataset.from_dict({"index": list(range(PROBE_IMAGES))}).with_transform(coloured_views(shuffled))
        trainer = LeJepaTrainer(
            model=model, args=args, train_dataset=dataset, probe_num_labels=3, probe_learning_rate=3e-3,
            data_collator=functools.partial(collate, with_labels=True),
        )
        trainer.train()
        runs[name] = [entry for entry in trainer.state.log_history if "probe_accuracy" in entry]

    def accuracy(name: str, steps: slice) -> float:
        entries = runs[name][steps]
        return sum(e["probe_accuracy"] for e in entries) / len(entries)

    assert accuracy("separable", slice(0, 2)) < 0.6  # the probe starts untrained
    assert accuracy("separable", slice(-4, None)) >= 0.9  # the last 64 images, unseen by the probe when measured
    assert accuracy("shuffled", slice(-4, None)) <= 0.6  # chance is 1/3; 0.6 is 4 standard deviations above it
    assert runs["separable"][-1]["probe_loss"] < runs["shuffled"][-1]["probe_loss"]


def test_online_probe_does_not_change_pretraining(tmp_path):
    trainer, with_probe = train(tmp_path / "probe", probe=True)
    _, without_probe = train(tmp_path / "plain", probe=False)
    # the probe trains on detached embeddings in its own parameter group: the pretraining run is unchanged
    assert len(with_probe) == len(without_probe) == 6
    for a, b in zip(with_probe, without_probe):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert with_probe[-1]["loss"] != with_probe[0]["loss"]  # the model did train
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
