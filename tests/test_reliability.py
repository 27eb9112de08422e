"""
Reliability, in one process: bad data end to end (run_pretraining.main on real parquet files, image folders and
streams), numerical safety (autocast, NaN/Inf losses, collapse), resuming with the exact saved state, complete
checkpoints only, and what a checkpoint may contain. Killed subprocesses are in test_reliability_interrupt.py.
"""

import copy
import io
import json
import logging
import os
import re
import signal
import struct
import sys
import zlib
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest
import safetensors.torch
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from modeling_lejepa.sigreg import SIGReg
from trainer import (
    LeJepaTrainer,
    MultiCropCollator,
    MultiCropTransform,
    NonFiniteLossError,
    NoTrainingDataError,
    get_last_complete_checkpoint,
    is_complete_checkpoint,
    load_digits_dataset,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
)
from trainer.callbacks import GracefulShutdownCallback, read_stream_states

REPO_ROOT = Path(__file__).resolve().parents[1]
# Global views only: the data paths under test are the same, at a quarter of the augmentation cost.
TINY_OVERRIDES = "num_local_views=0"


# ----------------------------------------------------------------------------------------------------------------
# Bad samples
# ----------------------------------------------------------------------------------------------------------------


def png_bytes(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_finished_run_destroys_its_process_group(tmp_path, monkeypatch):
    """A gloo group left to the interpreter's exit can abort a process after a successful run (SIGABRT from gloo's
    threads; seen in CI under `accelerate launch`), so `main()` destroys the group it trained in."""
    import torch.distributed as dist

    data = write_parquet(tmp_path / "train.parquet", num_good=16, bad=[])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        run_main(monkeypatch, tmp_path / "out", "--data_files", str(data), "--cache_dir", str(tmp_path / "cache"),
                 "--max_steps", "1")
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert (tmp_path / "out" / "model.safetensors").exists()


def jpeg_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` pixels, followed by a one-row image body."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4)) + chunk(
        b"IEND", b""
    )


def bad_image_values() -> dict[str, dict]:
    """One of each kind of bad image, as `datasets.Image(decode=False)` values."""
    jpeg = jpeg_bytes()
    return {
        "corrupt bytes": {"bytes": b"this is not an image", "path": None},
        "truncated JPEG": {"bytes": jpeg[: len(jpeg) // 2], "path": None},
        "empty file": {"bytes": b"", "path": None},
        "zero-size image": {"bytes": png_header(0, 0), "path": None},
        "decompression bomb": {"bytes": png_header(30_000, 30_000), "path": None},  # 900 Mpx in 70 bytes
        "too many pixels": {"bytes": png_header(10_000, 10_000), "path": None},  # 100 Mpx: over max_image_pixels
        "missing file": {"bytes": None, "path": "/nonexistent/image.png"},
    }


def write_parquet(path: Path, num_good: int, bad: list[dict], bad_first: bool = False, jpeg: bool = False) -> Path:
    """A parquet file of `num_good` PNGs (JPEGs with `jpeg`) and the `bad` values (spread through the file, or
    first), with labels."""
    good = [{"bytes": jpeg_bytes(i) if jpeg else png_bytes(i), "path": None} for i in range(num_good)]
    if bad_first:
        images = bad + good
    else:
        images = list(good)
        for index, value in enumerate(bad):
            images.insert((index * 7) % (len(images) + 1), value)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    dataset = datasets.Dataset.from_dict(
        {"image": images, "label": [i % 4 for i in range(len(images))]}, features=features
    )
    # pyarrow directly: `Dataset.to_parquet` stats every image path to estimate the size, and one path is missing.
    pq.write_table(dataset.data.table, str(path))
    return path


TRAIN_ARGS = [
    "--per_device_train_batch_size", "16", "--dataloader_num_workers", "0", "--logging_steps", "1",
    "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no", "--model_preset", "vit-tiny-test",
    "--config_overrides", TINY_OVERRIDES, "--online_probe", "false",
]


def run_main(monkeypatch, output_dir: Path, *args: str) -> list[dict]:
    """Runs `run_pretraining.main()` in this process and returns the log history it saved."""
    import run_pretraining

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)  # 5 s after each streamed parquet pass
    monkeypatch.setattr(sys, "argv", ["run_pretraining.py", "--output_dir", str(output_dir), *TRAIN_ARGS, *args])
    run_pretraining.main()
    return json.loads((output_dir / "trainer_state.json").read_text())["log_history"]


def skipped_images(log_history: list[dict]) -> int:
    return max((entry.get("skipped_images", 0) for entry in log_history), default=0)


def test_the_bad_inputs_used_here_are_rejected_for_the_right_reason():
    from trainer import decode_image
    from trainer.data import ImageDecodeError

    kinds = {}
    for name, value in bad_image_values().items():
        with pytest.raises(ImageDecodeError) as error:
            decode_image(value)
        kinds[name] = error.value.kind
    assert kinds == {
        "corrupt bytes": "unreadable", "truncated JPEG": "unreadable", "empty file": "empty",
        "zero-size image": "unreadable", "decompression bomb": "too large", "too many pixels": "too large",
        "missing file": "missing",
    }


def test_parquet_with_bad_images_trains_and_logs_the_skipped_count(tmp_path, monkeypatch, caplog):
    bad = list(bad_image_values().values())
    data = write_parquet(tmp_path / "train.parquet", num_good=96, bad=bad)  # 7 of 103 bad: under 10%
    with caplog.at_level(logging.WARNING):
        history = run_main(
            monkeypatch, tmp_path / "out", "--data_files", str(data), "--cache_dir", str(tmp_path / "cache"),
            "--num_train_epochs", "1",  # every image is seen once: all 7 bad ones are counted
        )
    assert history[-1]["step"] == 7 and all(np.isfinite(e["loss"]) for e in history if "loss" in e)
    assert skipped_images(history) == len(bad)
    assert "Skipping an image" in caplog.text and "Decompression bomb" in caplog.text
    assert (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "views", [[], ["--augment_on_device", "true", "--decode_on_device", "true"]], ids=["workers", "decode-on-device"]
)
def test_image_folder_with_bad_files_trains_and_logs_the_skipped_count(tmp_path, monkeypatch, views):
    """With `--decode_on_device` the good JPEGs are read from their paths and decoded by the trainer; the bad files
    fail in the workers (their headers do not read) and are counted there."""
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(20):
        (folder / f"good_{index:03d}.png").write_bytes(png_bytes(index))
        (folder / f"good_{index:03d}.jpg").write_bytes(jpeg_bytes(index))
    (folder / "truncated.jpg").write_bytes(jpeg_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    (folder / "garbage.jpg").write_bytes(os.urandom(500))
    (folder / "bomb.png").write_bytes(png_header(30_000, 30_000))
    history = run_main(
        monkeypatch, tmp_path / "out", "--train_dir", str(folder), "--cache_dir", str(tmp_path / "cache"),
        "--num_train_epochs", "1", *views,
    )
    assert history[-1]["step"] == 3 and skipped_images(history) == 4


def test_decode_on_device_needs_the_views_made_on_the_device(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(4):
        (folder / f"good_{index:03d}.jpg").write_bytes(jpeg_bytes(index))
    with pytest.raises(ValueError, match=r"`--decode_on_device` .* needs `--augment_on_device`"):
        run_main(monkeypatch, tmp_path / "out", "--train_dir", str(folder), "--cache_dir", str(tmp_path / "cache"),
                 "--max_steps", "1", "--augment_on_device", "false", "--decode_on_device", "true")


@pytest.mark.parametrize(
    "views", [[], ["--augment_on_device", "true", "--decode_on_device", "true"]], ids=["workers", "decode-on-device"]
)
def test_stream_with_bad_images_trains_and_logs_the_skipped_count(tmp_path, monkeypatch, views):
    # Bad rows first and a small shuffle buffer: they all come out of the stream within the first two batches.
    # With `--decode_on_device` the good images are JPEGs, whose bytes travel through the stream to the trainer.
    bad = list(bad_image_values().values())
    data = write_parquet(tmp_path / "train.parquet", num_good=60, bad=bad, bad_first=True, jpeg=bool(views))
    history = run_main(
        monkeypatch, tmp_path / "out", "--data_files", str(data), "--streaming", "--max_steps", "3",
        "--shuffle_buffer_size", "4", "--cache_dir", str(tmp_path / "cache"), *views,
    )
    assert history[-1]["step"] == 3
    assert skipped_images(history) == len(bad)  # filtered inside the stream, still reported


def test_too_many_bad_images_stop_with_a_clear_message(tmp_path, monkeypatch):
    bad = list(bad_image_values().values()) * 5  # 35 of 131: 27% > max_bad_fraction 0.1
    data = write_parquet(tmp_path / "train.parquet", num_good=96, bad=bad)
    message = r"could not be decoded, more than max_bad_fraction=0\.1.*--max_bad_fraction"
    with pytest.raises(RuntimeError, match=message):
        run_main(monkeypatch, tmp_path / "out", "--data_files", str(data), "--cache_dir", str(tmp_path / "c"),
                 "--num_train_epochs", "1")
    # The same data passes with a higher threshold.
    history = run_main(monkeypatch, tmp_path / "out2", "--data_files", str(data), "--cache_dir", str(tmp_path / "c"),
                       "--max_steps", "2", "--max_bad_fraction", "0.5")
    assert history[-1]["step"] == 2


def test_nothing_usable_stops_with_a_clear_message(tmp_path, monkeypatch):
    bad = list(bad_image_values().values()) * 3  # 21 bad images, fewer than the 100 the fraction check waits for
    data = write_parquet(tmp_path / "train.parquet", num_good=0, bad=bad)
    with pytest.raises(RuntimeError, match="Every example of this batch .* failed to decode"):
        run_main(monkeypatch, tmp_path / "map", "--data_files", str(data), "--cache_dir", str(tmp_path / "c"),
                 "--max_steps", "2")
    with pytest.raises(NoTrainingDataError, match=r"process 0 of 1: no usable image in the stream \(1 shard"):
        run_main(monkeypatch, tmp_path / "stream", "--data_files", str(data), "--cache_dir", str(tmp_path / "c"),
                 "--max_steps", "2", "--streaming")


def test_missing_or_wrong_image_column_names_the_columns(tmp_path, monkeypatch):
    data = write_parquet(tmp_path / "train.parquet", num_good=4, bad=[])
    common = ["--data_files", str(data), "--cache_dir", str(tmp_path / "c"), "--max_steps", "1"]
    columns = r"the dataset has columns \['image', 'label'\]"
    with pytest.raises(ValueError, match=rf"Image column 'photo' not found; {columns}"):
        run_main(monkeypatch, tmp_path / "out", *common, "--image_column_name", "photo")
    with pytest.raises(ValueError, match=r"Column 'label' holds .* not images.*\['image', 'label'\]"):
        run_main(monkeypatch, tmp_path / "out", *common, "--image_column_name", "label")
    with pytest.raises(ValueError, match=r"'photo' not found; the dataset has columns \['image', 'label'\]"):
        run_main(monkeypatch, tmp_path / "out", *common, "--image_column_name", "photo", "--streaming")


# ----------------------------------------------------------------------------------------------------------------
# Numerical safety
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sigreg_under_autocast_is_float32_and_matches(dtype):
    torch.manual_seed(0)
    sigreg = SIGReg(num_slices=256)
    for scale in (1.0, 10.0, 100.0):
        z = torch.randn(4, 128, 16) * scale
        reference = sigreg(z, step=0)
        with torch.autocast("cpu", dtype=dtype):
            autocast = sigreg(z, step=0)
        assert autocast.dtype == torch.float32 and torch.equal(autocast, reference)  # computed in float32
        # Inputs rounded to 16 bits (what a 16-bit projector gives): measured <= 1.3e-4 relative.
        low = sigreg(z.to(dtype), step=0)
        assert torch.isfinite(low) and low.dtype == torch.float32
        torch.testing.assert_close(low, reference, rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_loss_terms_under_autocast_are_finite_and_close(dtype):
    torch.manual_seed(0)
    model = LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test")).train()
    views, local_views = torch.randn(32, 2, 3, 32, 32), torch.randn(32, 6, 3, 16, 16)
    reference = model(views, local_pixel_values=local_views, step=3)
    with torch.autocast("cpu", dtype=dtype):
        outputs = model(views, local_pixel_values=local_views, step=3)
    assert outputs.projections.dtype == dtype  # autocast really ran in 16 bits
    assert outputs.sigreg_loss.dtype == torch.float32
    for name in ("loss", "prediction_loss", "sigreg_loss"):
        value, expected = getattr(outputs, name).float(), getattr(reference, name)
        assert torch.isfinite(value)
        torch.testing.assert_close(value, expected, rtol=1e-2, atol=0)  # measured <= 5.4e-4 (bf16), 1.5e-4 (fp16)


def digits_subset(count: int = 64, num_local_views: int = 2):
    config = LeJepaConfig.from_preset("vit-tiny-test", num_local_views=num_local_views)
    digits = load_digits_dataset(image_size=32)["train"].select(range(count))
    train = prepare_pretraining_dataset(digits, MultiCropTransform.from_lejepa_config(config), "image", "label")
    return config, train


def training_args(output_dir, **kwargs) -> TrainingArguments:
    values = {
        "per_device_train_batch_size": 16, "logging_steps": 1, "report_to": [], "use_cpu": True,
        "dataloader_num_workers": 0, "remove_unused_columns": False, "save_strategy": "no", "disable_tqdm": True,
        "seed": 0,
    }
    values.update(kwargs)
    return TrainingArguments(str(output_dir), **values)


class NaNOnBatch(MultiCropCollator):
    """Puts a NaN pixel into the `nan_batch`-th batch (0-based)."""

    def __init__(self, nan_batch: int):
        super().__init__()
        self.nan_batch, self.calls = nan_batch, 0

    def __call__(self, examples):
        batch = super().__call__(examples)
        if self.calls == self.nan_batch:
            batch["pixel_values"][0, 0, 0, 0, 0] = float("nan")
        self.calls += 1
        return batch


class Snapshots(TrainerCallback):
    """Copies of the model (parameters and buffers) and optimizer state after every optimizer step."""

    def __init__(self):
        self.model, self.optimizer = {}, {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.model[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.optimizer[state.global_step] = copy.deepcopy(optimizer.state_dict()["state"])


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_state(a[key], b[key])
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_nan_loss_raises_naming_the_step_and_the_terms(tmp_path):
    config, train = digits_subset()
    trainer = LeJepaTrainer(
        model=LeJepaForPreTraining(config), args=training_args(tmp_path, max_steps=4), train_dataset=train,
        data_collator=NaNOnBatch(nan_batch=2), on_nonfinite_loss="raise",
    )
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(NonFiniteLossError, match=r"Non-finite loss at step 2: loss=nan, prediction_loss=nan"):
        trainer.train()
    assert trainer.state.global_step == 2  # nothing trained on the NaN batch
    assert signal.getsignal(signal.SIGTERM) is handler  # the SIGTERM handler does not outlive a failed train()


def test_nan_loss_skip_leaves_weights_optimizer_and_batchnorm_untouched(tmp_path):
    config, train = digits_subset()
    snapshots = Snapshots()
    trainer = LeJepaTrainer(
        model=LeJepaForPreTraining(config), args=training_args(tmp_path, max_steps=4, weight_decay=0.05),
        train_dataset=train, data_collator=NaNOnBatch(nan_batch=2), on_nonfinite_loss="skip",
        callbacks=[snapshots],
    )
    trainer.train()
    assert trainer.state.global_step == 4 and trainer.nonfinite_steps == 1
    # Step 3 (the NaN batch) changed nothing: parameters, BatchNorm running statistics, AdamW moments.
    assert_same_state(snapshots.model[3], snapshots.model[2])
    assert_same_state(snapshots.optimizer[3], snapshots.optimizer[2])
    # The steps around it did train.
    weight = "projector.layers.0.weight"
    assert not torch.equal(snapshots.model[2][weight], snapshots.model[1][weight])
    assert not torch.equal(snapshots.model[4][weight], snapshots.model[3][weight])
    assert all(torch.isfinite(value).all() for value in snapshots.model[4].values() if value.is_floating_point())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry.get("nonfinite_steps", 0) for entry in logs] == [0, 0, 1, 1]
    assert all(np.isfinite(entry["loss"]) for entry in logs)  # the skipped step is left out of the logged loss


class InfiniteGradientAtStep(TrainerCallback):
    """Makes one parameter's gradient infinite in the backward pass of step `step` (0-based): a finite loss with
    non-finite gradients, as an overflow in the backward pass gives."""

    def __init__(self, parameter: torch.nn.Parameter, step: int):
        self.step, self.current = step, -1
        parameter.register_hook(lambda grad: grad * float("inf") if self.current == self.step else grad)

    def on_step_begin(self, args, state, control, **kwargs):
        self.current = state.global_step


def test_nonfinite_gradients_with_a_finite_loss_raise(tmp_path):
    config, train = digits_subset()
    model = LeJepaForPreTraining(config)
    trainer = LeJepaTrainer(
        model=model, args=training_args(tmp_path, max_steps=4), train_dataset=train,
        data_collator=MultiCropCollator(), on_nonfinite_loss="raise",
        callbacks=[InfiniteGradientAtStep(model.projector.layers[-1].weight, step=2)],
    )
    with pytest.raises(NonFiniteLossError, match=r"Non-finite gradients at step 2 \(gradient norm (inf|nan)\)"):
        trainer.train()
    assert trainer.state.global_step == 2


def test_nonfinite_gradients_skip_leaves_weights_and_optimizer_untouched(tmp_path):
    config, train = digits_subset()
    model = LeJepaForPreTraining(config)
    snapshots = Snapshots()
    trainer = LeJepaTrainer(
        model=model, args=training_args(tmp_path, max_steps=4, weight_decay=0.05), train_dataset=train,
        data_collator=MultiCropCollator(), on_nonfinite_loss="skip",
        callbacks=[snapshots, InfiniteGradientAtStep(model.projector.layers[-1].weight, step=2)],
    )
    trainer.train()
    assert trainer.state.global_step == 4 and trainer.nonfinite_steps == 1
    parameters = {name for name, _ in model.named_parameters()}
    step_2 = {k: v for k, v in snapshots.model[2].items() if k in parameters}
    step_3 = {k: v for k, v in snapshots.model[3].items() if k in parameters}
    assert_same_state(step_3, step_2)  # the parameters did not move (BatchNorm statistics saw a finite forward)
    assert_same_state(snapshots.optimizer[3], snapshots.optimizer[2])
    weight = "projector.layers.0.weight"
    assert not torch.equal(snapshots.model[4][weight], snapshots.model[3][weight])
    assert all(torch.isfinite(value).all() for value in snapshots.model[4].values() if value.is_floating_point())
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry.get("nonfinite_steps", 0) for entry in logs] == [0, 0, 1, 1]


class ConstantBackbone:
    """A forward hook that replaces the backbone's output by a constant: a collapsed encoder."""

    def __call__(self, module, inputs, outputs):
        outputs.last_hidden_state = outputs.last_hidden_state * 0.0 + 1.0
        return outputs


def test_collapse_is_detected_and_logged_as_a_warning(tmp_path, caplog):
    config, train = digits_subset(count=32)
    model = LeJepaForPreTraining(config)
    model.lejepa.backbone.register_forward_hook(ConstantBackbone())
    trainer = LeJepaTrainer(
        model=model, args=training_args(tmp_path, max_steps=2), train_dataset=train,
        data_collator=MultiCropCollator(return_labels=False), collapse_std_threshold=1e-3,
    )
    with caplog.at_level(logging.WARNING, logger="trainer.trainer"):
        trainer.train()
    assert [entry["embedding_std"] for entry in trainer.state.log_history if "loss" in entry] == [0.0, 0.0]
    assert "Possible collapse at step 1: the embeddings' mean standard deviation is 0.00e+00" in caplog.text

    caplog.clear()
    healthy = LeJepaTrainer(
        model=LeJepaForPreTraining(config), args=training_args(tmp_path, max_steps=1), train_dataset=train,
        data_collator=MultiCropCollator(return_labels=False),
    )
    with caplog.at_level(logging.WARNING, logger="trainer.trainer"):
        healthy.train()
    assert "Possible collapse" not in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# Resuming: SIGTERM, exact state, complete checkpoints only
# ----------------------------------------------------------------------------------------------------------------


def test_sigterm_sets_save_and_stop_at_the_step_end_and_a_second_one_is_not_caught(tmp_path):
    callback, previous = GracefulShutdownCallback(), signal.getsignal(signal.SIGTERM)
    args, state, control = training_args(tmp_path), TrainerState(global_step=7), TrainerControl()
    callback.on_train_begin(args, state, control)
    try:
        callback.on_step_end(args, state, control)
        assert not (control.should_save or control.should_training_stop)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: only a flag is set
        assert callback.received_signal == signal.SIGTERM and callback.stopped_by_signal is None
        assert signal.getsignal(signal.SIGTERM) is previous  # a second SIGTERM would get the previous handler
        callback.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop
        assert callback.stopped_by_signal == signal.SIGTERM
    finally:
        callback.on_train_end(args, state, control)
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) is previous


class StateAt(TrainerCallback):
    """The model, probe, optimizer and scheduler state at the end of step `step` (or when training begins)."""

    def __init__(self, trainer_ref: list, step: int | None):
        self.trainer_ref, self.step, self.state = trainer_ref, step, None

    def _capture(self, model, optimizer, lr_scheduler):
        trainer = self.trainer_ref[0]
        self.state = {
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "probe": {k: v.detach().clone() for k, v in trainer.probe.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
            "scheduler": {k: v for k, v in lr_scheduler.state_dict().items() if k != "lr_lambdas"},
        }

    def on_step_end(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if state.global_step == self.step:
            self._capture(model, optimizer, lr_scheduler)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if self.step is None:
            self._capture(model, optimizer, lr_scheduler)


def make_trainer(output_dir, config, train, seed: int, callback_step: int | None, **kwargs):
    torch.manual_seed(seed)  # a different initialisation for the resumed run: the checkpoint must overwrite it
    trainer_ref = []
    capture = StateAt(trainer_ref, callback_step)
    trainer = LeJepaTrainer(
        model=LeJepaForPreTraining(config), args=training_args(output_dir, **kwargs), train_dataset=train,
        data_collator=MultiCropCollator(), probe_num_labels=10, callbacks=[capture],
    )
    trainer_ref.append(trainer)
    return trainer, capture


def test_resume_restores_model_probe_optimizer_and_scheduler_exactly(tmp_path):
    config, train = digits_subset()
    args = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2}
    first, at_step_2 = make_trainer(tmp_path, config, train, seed=0, callback_step=2, **args)
    first.train()
    assert is_complete_checkpoint(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-2" / "probe.safetensors").exists()

    resumed, at_resume = make_trainer(tmp_path, config, train, seed=1, callback_step=None, **args)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    saved, loaded = at_step_2.state, at_resume.state
    # Bit-exact, backbone included: Trainer 5.24's own loading skips the backbone's renamed keys (ViT checkpoints
    # are written in the transformers 4 layout) and would resume from the initial weights.
    assert_same_state(loaded["model"], saved["model"])
    assert_same_state(loaded["probe"], saved["probe"])
    assert_same_state(loaded["optimizer"], saved["optimizer"])
    assert loaded["scheduler"]["last_epoch"] == saved["scheduler"]["last_epoch"] == 2
    assert loaded["scheduler"]["_last_lr"] == saved["scheduler"]["_last_lr"]
    assert resumed.state.global_step == 4


def test_resume_skips_incomplete_checkpoints(tmp_path):
    config, train = digits_subset(count=32)
    args = {"max_steps": 2, "save_strategy": "steps", "save_steps": 1}
    first, _ = make_trainer(tmp_path, config, train, seed=0, callback_step=None, **args)
    first.train()
    # A run killed while writing checkpoint-3: half a weights file, no trainer_state.json.
    partial = tmp_path / "checkpoint-3"
    partial.mkdir()
    weights = (tmp_path / "checkpoint-2" / "model.safetensors").read_bytes()
    (partial / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    # And one killed while writing trainer_state.json itself.
    torn = tmp_path / "checkpoint-4"
    torn.mkdir()
    (torn / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
    assert not is_complete_checkpoint(partial) and not is_complete_checkpoint(torn)
    assert get_last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")

    resumed, at_resume = make_trainer(tmp_path, config, train, seed=1, callback_step=None, max_steps=3,
                                      save_strategy="no")
    resumed.train(resume_from_checkpoint=True)  # picks checkpoint-2
    assert resumed.state.global_step == 3 and at_resume.state["scheduler"]["last_epoch"] == 2
    message = r"checkpoint-3 is an incomplete checkpoint .* last complete one is .*checkpoint-2"
    with pytest.raises(ValueError, match=message):
        resumed.train(resume_from_checkpoint=str(partial))


def test_stream_resumes_from_the_saved_position(tmp_path, monkeypatch):
    pytest.importorskip("torchdata.stateful_dataloader")
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    ids = list(range(120))
    datasets.Dataset.from_dict(
        {"image": [{"bytes": png_bytes(i, size=12), "path": None} for i in ids], "label": ids}, features=features
    ).to_parquet(str(tmp_path / "stream.parquet"))
    config = LeJepaConfig.from_preset("vit-tiny-test", num_local_views=0)
    buffer_size = 8

    class Recording(LeJepaTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            self.seen.append(inputs["labels"].tolist())  # the example ids trained on, batch by batch
            return super().compute_loss(model, inputs, *args, **kwargs)

    def make(output_dir, stop_at=None):
        stream, image_column, _ = load_pretraining_dataset(
            data_files=str(tmp_path / "stream.parquet"), streaming=True, seed=0, shuffle_buffer_size=buffer_size,
            cache_dir=str(tmp_path / "cache"),
        )
        stream = prepare_pretraining_dataset(stream, MultiCropTransform.from_lejepa_config(config), image_column,
                                             "label")
        trainer = Recording(
            model=LeJepaForPreTraining(config), train_dataset=stream, data_collator=MultiCropCollator(),
            args=training_args(output_dir, max_steps=8, save_strategy="steps", save_steps=100,
                               per_device_train_batch_size=8, accelerator_config={"dispatch_batches": False}),
        )
        trainer.seen = []
        if stop_at is not None:  # what SIGTERM does, at the end of step `stop_at`

            class Stop(TrainerCallback):
                def on_step_end(self, args, state, control, **kwargs):
                    if state.global_step == stop_at - 1:
                        trainer.graceful_shutdown.received_signal = 15

            trainer.add_callback(Stop)
        return trainer

    reference = make(tmp_path / "reference")
    reference.train()
    interrupted = make(tmp_path / "run", stop_at=4)
    interrupted.train()
    assert interrupted.stopped_by_signal == 15 and interrupted.state.global_step == 4
    states = read_stream_states(tmp_path / "run" / "checkpoint-4")
    assert states is not None and len(states) == 1 and states[0]["_num_yielded"] == 4
    resumed = make(tmp_path / "run")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 8 and resumed.args.ignore_data_skip is False  # restored after train()

    before = [i for batch in interrupted.seen for i in batch]
    after = [i for batch in resumed.seen for i in batch]
    expected_after = [i for batch in reference.seen[4:] for i in batch]
    assert before == [i for batch in reference.seen[:4] for i in batch]
    assert not set(before) & set(after)  # nothing repeated
    assert len(set(after) ^ set(expected_after)) <= 2 * buffer_size  # the shuffle buffer's content may be lost
    assert len(resumed.seen) == 4  # 4 batches decoded after resuming: the stream was not re-read up to step 4


# ----------------------------------------------------------------------------------------------------------------
# What checkpoints contain
# ----------------------------------------------------------------------------------------------------------------


def package_code_closure() -> dict[str, bytes]:
    """The modeling_lejepa files that the model and config code import (relative imports, transitively)."""
    package = REPO_ROOT / "modeling_lejepa"
    todo, found = ["modeling_lejepa.py", "configuration_lejepa.py"], {}
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found[name] = (package / name).read_bytes()
        todo += [f"{module}.py" for module in re.findall(r"^from \.(\w+) import", found[name].decode(), re.M)]
    return found


def test_checkpoints_hold_safetensors_weights_and_only_the_package_code(tmp_path):
    config, train = digits_subset(count=32)
    trainer, _ = make_trainer(tmp_path, config, train, seed=0, callback_step=None, max_steps=1,
                              save_strategy="steps", save_steps=1)
    trainer.train()
    trainer.save_model()
    expected = package_code_closure()
    for folder in (tmp_path / "checkpoint-1", tmp_path):
        code = {path.name: path.read_bytes() for path in folder.glob("*.py")}
        assert code.keys() == expected.keys() and all(code[name] == expected[name] for name in code), folder
        names = {path.name for path in folder.iterdir() if path.is_file()}
        assert "model.safetensors" in names and not {"pytorch_model.bin", "model.bin"} & names
        safetensors.torch.load_file(folder / "model.safetensors")  # loads without pickle
    # Pickled files Trainer writes for resuming (optimizer, scheduler, RNG): transformers 5.24 reads them back with
    # torch.load(weights_only=True). The training arguments are JSON, not Trainer's pickled training_args.bin.
    pickles = {path.name for path in (tmp_path / "checkpoint-1").iterdir() if path.suffix in (".bin", ".pt", ".pth")}
    assert pickles == {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert not any(path.suffix in (".bin", ".pt", ".pth") for path in tmp_path.iterdir())
    for folder in (tmp_path / "checkpoint-1", tmp_path):
        assert json.loads((folder / "training_args.json").read_text())["max_steps"] == 1


def test_no_unsafe_torch_load_in_the_package():
    offenders = []
    for path in REPO_ROOT.rglob("*.py"):
        if any(part in {"tests", ".venv", "venv", "build"} for part in path.relative_to(REPO_ROOT).parts):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\btorch\.load\(", line) and "weights_only=True" not in line or re.search(
                r"\bpickle\.loads?\(", line
            ):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not offenders


def test_pickle_weights_are_refused(tmp_path, monkeypatch):
    config = LeJepaConfig.from_preset("vit-tiny-test")
    model = LeJepaForPreTraining(config)
    model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "ckpt" / "pytorch_model.bin")  # what an untrusted download may hold
    with pytest.raises(OSError, match="model.safetensors"):
        run_main(monkeypatch, tmp_path / "out", "--model_name_or_path", str(tmp_path / "ckpt"), "--max_steps", "1")
