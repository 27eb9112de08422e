#!/usr/bin/env python
"""
LeJEPA training throughput and model FLOPs utilisation (MFU) on one GPU.

For each model (default: the ViT-B/16 and ViT-H/14 presets, optionally ResNet-50), `LeJepaForPreTraining` trains in a
tight loop on synthetic views already on the GPU (the default 2 x 224 px global + 6 x 96 px local views, 6 x 98 px for
patch-14 presets): `model(global, local, step=step)` under bf16 autocast (fp32 weights), `loss.backward()`,
`clip_grad_norm_(1.0)` (Trainer's default; `--max-grad-norm 0` for none), fused AdamW
(`torch.optim.AdamW(fused=True)`), `zero_grad(set_to_none=True)`. Attention is SDPA, or FlashAttention-2 when
`flash_attn` is importable (`config.backbone_config._attn_implementation`). Options: `torch.compile`, activation
checkpointing (`model.activation_checkpointing_enable()`), channels_last for ConvNets. After warm-up steps the timed
steps run between two `torch.cuda.synchronize()` calls, with no host sync inside. On an out-of-memory error the batch
is halved and the model retried.

MFU (ViTs): model FLOPs per step / step time / peak, with the forward FLOPs counted analytically (matmuls only):

    F_fwd(image) = sum over views [ 2 n (3 p^2) D                                      patch embedding
                                    + L (2 N (4 D^2 + 2 D F) + 4 N^2 D) ]              QKV, out proj, MLP; QK^T, AV
                   + V [ 2 (D H + H H + H K) + 2 K M ]                                 projector, SIGReg directions
    MFU = 3 F_fwd B / t_step / peak   (backward = 2 x forward; recomputation by checkpointing is not counted)

with `n = (S/p)^2` patches and `N = n + 1` tokens per view of side `S`, `D` hidden size, `F` MLP size, `L` layers,
`V` views, projector `D -> H -> H -> K`, `M` SIGReg slices, `B` images per step, peak 989 TFLOP/s (H100/H200 dense
bf16). For other backbones (ResNet-50) the forward FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode`
on one forward pass (also shown for ViTs as a cross-check when attention is SDPA or eager; with eager attention the two
agree exactly, which `tests/test_benchmarks_smoke.py` checks; on a CPU, FlopCounterMode has no formula for SDPA's CPU
flash-attention kernel, so its count then lacks the attention term).

Modes (`--modes`): `loop`, the tight loop above; `host-syncs`, the same with the two host syncs per step that
`LeJepaTrainer` and `Trainer` make (finite-loss checks after the forward and the backward pass); `trainer`,
`LeJepaTrainer` itself (bf16, fused AdamW, same clipping, cosine schedule, logging every 10 steps) on batches already
on the GPU, so that the difference to `loop` is the trainer's own cost; `end-to-end`, the tight loop fed by the real
data path: a folder of generated 1024 x 768 JPEGs (`--e2e-images`) -> `load_pretraining_dataset(train_dir=...)` ->
`prepare_pretraining_dataset` with `DecodeResizeTransform` (reduced-size decode, resize once, uint8) ->
`MultiCropCollator` in a `DataLoader` with `--loader-workers` persistent workers (pinned memory) -> the batch copied to
the GPU -> `DeviceMultiCrop` (all views of the batch cut and augmented on the GPU) -> the same training step;
`end-to-end-decode`, the same with `decode_on_device`: the workers only read each JPEG's bytes and header, and the
JPEGs are decoded (torchcodec: nvJPEG) and resized on the GPU (`append_device_decoded`). Their images/s is also given
as a fraction of the `loop` mode's (synthetic inputs) when both run.

Usage (from the repository root; `benchmarks/gpu.sh` wraps it for the GPU machine):

```bash
python benchmarks/bench_gpu.py                                   # ViT-B/16 batch 128, ViT-H/14 batch 64
python benchmarks/bench_gpu.py --models vit-base-patch16 resnet-50 --channels-last --compile
python benchmarks/bench_gpu.py --quick                           # tiny model, 2 steps; runs on a CPU too
```
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining  # noqa: E402

MODES = ("loop", "host-syncs", "trainer", "end-to-end", "end-to-end-decode")
END_TO_END_MODES = ("end-to-end", "end-to-end-decode")
DEFAULT_BATCH_SIZES = {"vit-base-patch16": 128, "vit-huge-patch14": 64, "vit-large-patch14": 96, "resnet-50": 128}
# Dense bf16 tensor-core peaks (FLOP/s), matched against torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
MFU_FORMULA = (
    "MFU = 3 * F_fwd * B / t_step / peak; F_fwd per image = sum over views [2 n (3 p^2) D + L (2 N (4 D^2 + 2 D F) "
    "+ 4 N^2 D)] + V [2 (D H + H H + H K) + 2 K M], n = (S/p)^2 patches, N = n + 1 tokens (matmul FLOPs only; "
    "backward = 2 x forward; activation recomputation not counted)"
)


# ------------------------------------------------------------------------------------------------------------ FLOPs
def vit_forward_flops(config: LeJepaConfig) -> float | None:
    """Analytic forward FLOPs of one image (all its views) through a ViT LeJEPA model; `None` for other backbones."""
    backbone = config.backbone_config
    if backbone.model_type not in ("vit", "deit", "dinov2"):
        return None
    d, f, layers = backbone.hidden_size, backbone.intermediate_size, backbone.num_hidden_layers
    p = backbone.patch_size if isinstance(backbone.patch_size, int) else backbone.patch_size[0]
    total = 0.0
    for count, side in ((config.num_global_views, config.global_image_size),
                        (config.num_local_views, config.local_image_size)):
        patches = (side // p) ** 2
        tokens = patches + 1
        per_view = 2 * patches * (3 * p * p) * d + layers * (2 * tokens * (4 * d * d + 2 * d * f) + 4 * tokens**2 * d)
        total += count * per_view
    h, k, m = config.projector_hidden_size, config.projector_output_size, config.sigreg_num_slices
    hidden_layers = config.projector_num_layers - 1
    projector = 2 * (d * h + (hidden_layers - 1) * h * h + h * k) if hidden_layers > 0 else 2 * d * k
    total += (config.num_global_views + config.num_local_views) * (projector + 2 * k * m)
    return total


def counted_forward_flops(model: LeJepaForPreTraining, inputs: tuple[torch.Tensor, torch.Tensor | None]) -> float:
    """Forward FLOPs per image counted by `FlopCounterMode` (matmuls, convolutions, SDPA) on a 2-image batch."""
    from torch.utils.flop_counter import FlopCounterMode

    global_views, local_views = inputs
    small = (global_views[:2], None if local_views is None else local_views[:2])
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, _autocast(global_views.device):
        model(small[0], local_pixel_values=small[1], step=0)
    return counter.get_total_flops() / small[0].shape[0]


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (given)"
    if device.type != "cuda":
        return None, "n/a (not a GPU)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value, f"{value / 1e12:g} TFLOP/s ({key} dense bf16)"
    return None, f"unknown for {name!r}: pass --peak-tflops"


# --------------------------------------------------------------------------------------------------------- running
def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention_implementation(requested: str) -> str:
    if requested != "auto":
        return requested
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def build_model(name: str, args: argparse.Namespace, device: torch.device, attn: str) -> LeJepaForPreTraining:
    config = LeJepaConfig.from_preset(name)
    if args.quick and config.global_image_size > 64:  # small views that the patch size allows
        patch = getattr(config.backbone_config, "patch_size", 16)
        patch = patch if isinstance(patch, int) else patch[0]
        config = LeJepaConfig.from_preset(name, global_image_size=2 * patch, local_image_size=patch)
    if hasattr(config.backbone_config, "hidden_size") and config.backbone_config.model_type != "resnet":
        config.backbone_config._attn_implementation = attn
    with torch.device(device):  # initialise on the device: seconds instead of a minute for ViT-H on the CPU
        model = LeJepaForPreTraining(config)
    if args.activation_checkpointing:
        model.activation_checkpointing_enable()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def synthetic_views(config: LeJepaConfig, batch_size: int, device: torch.device, channels_last: bool):
    """Views `(B, V, 3, S, S)`; with `channels_last`, laid out so that the model's `(V*B, 3, S, S)` is NHWC."""

    def views(count: int, side: int) -> torch.Tensor | None:
        if count == 0:
            return None
        if channels_last:  # (V, B, S, S, 3) in memory -> (B, V, 3, S, S) view
            return torch.randn(count, batch_size, side, side, 3, device=device).permute(1, 0, 4, 2, 3)
        return torch.randn(batch_size, count, 3, side, side, device=device)

    return (views(config.num_global_views, config.global_image_size),
            views(config.num_local_views, config.local_image_size))


def run_model(
    name: str, args: argparse.Namespace, device: torch.device, attn: str, peak: float | None, mode: str = "loop"
) -> dict:
    """Builds, warms up and times one model in one mode, halving the batch on out-of-memory errors."""
    batch_size = args.batch_size or DEFAULT_BATCH_SIZES.get(name, 64)
    if args.quick:
        batch_size = args.batch_size or 4
    while True:
        try:
            return _run_model_once(name, args, device, attn, peak, batch_size, mode)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
        # Outside the `except` block the traceback, and the model and optimizer its frames held, are gone.
        gc.collect()
        torch.cuda.empty_cache()
        print(f"  {name}: out of memory at batch {batch_size}, retrying with {batch_size // 2}", flush=True)
        batch_size //= 2


class _FixedBatches(torch.utils.data.Dataset):
    """`length` indices; the collator below ignores them and returns the same batch, already on the device."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


def _time_trainer(model, args: argparse.Namespace, inputs, batch_size: int, device: torch.device) -> tuple:
    """
    `LeJepaTrainer` (bf16, fused AdamW, grad clipping 1.0, cosine schedule, logging every 10 steps, no checkpoints) on
    batches already on the device, so that nothing but the trainer differs from the tight loop. Returns the warm-up
    time, the timed seconds and the last logged loss.
    """
    import tempfile

    from transformers import TrainerCallback, TrainingArguments

    from trainer import LeJepaTrainer

    marks: dict[str, float] = {}
    first, last = args.warmup_steps, args.warmup_steps + args.steps

    class Marks(TrainerCallback):
        def on_train_begin(self, *unused, **kwargs):
            marks["begin"] = time.perf_counter()

        def on_step_end(self, training_args, state, control, **kwargs):
            if state.global_step in (first, last):  # the only syncs added: at the ends of the timed window
                _synchronize(device)
                marks[state.global_step] = time.perf_counter()

    batch = {"pixel_values": inputs[0], "local_pixel_values": inputs[1]}
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=last, learning_rate=5e-4,
            weight_decay=0.05, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 1e-3},
            warmup_steps=min(2, last - 1), max_grad_norm=args.max_grad_norm, bf16=True, optim="adamw_torch_fused",
            logging_steps=10, save_strategy="no", report_to="none", dataloader_num_workers=0,
            dataloader_pin_memory=False, remove_unused_columns=False, disable_tqdm=True, use_cpu=device.type == "cpu",
            torch_compile=args.compile,
        )
        trainer = LeJepaTrainer(
            model=model, args=training_args, train_dataset=_FixedBatches(batch_size * last),
            data_collator=lambda examples: dict(batch), callbacks=[Marks()],
        )
        with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its logs when tqdm is off
            trainer.train()
    losses = [entry.get("loss", entry.get("train_loss")) for entry in trainer.state.log_history]
    losses = [loss for loss in losses if loss is not None]
    return marks[first] - marks["begin"], marks[last] - marks[first], losses[-1] if losses else float("nan")


class _EndToEndInputs:
    """An endless iterator of `(global views, local views)` from the real data path with views made on the device."""

    def __init__(self, config: LeJepaConfig, args: argparse.Namespace, batch_size: int, device: torch.device,
                 num_batches: int, decode_on_device: bool = False):
        from torch.utils.data import DataLoader, RandomSampler

        from trainer import (
            DecodeResizeTransform,
            DeviceMultiCrop,
            MultiCropCollator,
            MultiCropConfig,
            load_pretraining_dataset,
            prepare_pretraining_dataset,
            view_generator,
        )

        views = MultiCropConfig.from_lejepa_config(config)
        dataset, image_column, _ = load_pretraining_dataset(train_dir=str(args.e2e_dir), cache_dir=str(args.e2e_cache))
        self.resize = DecodeResizeTransform(views, decode_on_device=decode_on_device)
        dataset = prepare_pretraining_dataset(dataset, self.resize, image_column)
        sampler = RandomSampler(dataset, replacement=True, num_samples=batch_size * num_batches)
        workers = args.loader_workers
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
            collate_fn=MultiCropCollator(return_labels=False), persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        self.iterator = iter(self.loader)
        self.views, self.view_generator, self.device, self.step = DeviceMultiCrop(views), view_generator, device, 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        from trainer.data.device_views import append_device_decoded

        batch = next(self.iterator)
        images, sizes = batch.get("images"), batch.get("image_sizes")
        if images is not None:
            images = images.to(self.device, non_blocking=True)
            sizes = sizes.to(self.device, non_blocking=True)
        if batch.get("jpeg_bytes"):  # decode_on_device
            images, sizes, _ = append_device_decoded(images, sizes, batch["jpeg_bytes"], self.resize, self.device)
        self.step += 1
        output = self.views(images, sizes, self.view_generator(0, self.step))
        return output["pixel_values"], output.get("local_pixel_values")


def write_e2e_jpegs(folder: Path, count: int, width: int, height: int) -> None:
    """`count` photo-like JPEGs (benchmarks/bench_data.py's generator), written by all CPU cores."""
    import multiprocessing

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_data import write_jpegs

    folder.mkdir(parents=True, exist_ok=True)
    processes = max(1, min(os.cpu_count() or 1, 16))
    per_process = -(-count // processes)
    jobs = [(folder / f"part{index}", min(per_process, count - index * per_process), width, height, 90, index)
            for index in range(processes) if count - index * per_process > 0]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        pool.starmap(write_jpegs, jobs)


def _time_loop(
    model, args: argparse.Namespace, device: torch.device, next_views, host_syncs: bool
) -> tuple[float, float, float]:
    """A plain training loop on the views `next_views()` returns: (warm-up seconds, timed seconds, last loss). With
    `host_syncs`, the two host syncs `LeJepaTrainer` makes per step (its non-finite loss check and Trainer's
    `logging_nan_inf_filter`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05, fused=device.type == "cuda")
    forward = torch.compile(model) if args.compile else model

    def step_fn(step: int) -> torch.Tensor:
        global_views, local_views = next_views()
        with _autocast(device):
            outputs = forward(global_views, local_pixel_values=local_views, step=step)
        if host_syncs and not torch.isfinite(outputs.loss):  # as LeJepaTrainer.compute_loss
            raise RuntimeError(f"Non-finite loss at step {step}.")
        outputs.loss.backward()
        if host_syncs and bool(torch.isnan(outputs.loss.detach()) or torch.isinf(outputs.loss.detach())):
            raise RuntimeError(f"Non-finite loss at step {step}.")  # as Trainer's `logging_nan_inf_filter`
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return outputs.loss

    warmup_start = time.perf_counter()
    for step in range(args.warmup_steps):  # end to end: includes the workers' start-up and the first batches
        step_fn(step)
    _synchronize(device)
    warmup_time = time.perf_counter() - warmup_start
    start = time.perf_counter()
    for step in range(args.warmup_steps, args.warmup_steps + args.steps):
        step_fn(step)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    last_loss = step_fn(args.warmup_steps + args.steps).item()  # untimed: checks that training is finite
    return warmup_time, elapsed, last_loss


def _run_model_once(
    name: str, args: argparse.Namespace, device: torch.device, attn: str, peak: float | None, batch_size: int,
    mode: str,
) -> dict:
    build_start = time.perf_counter()
    model = build_model(name, args, device, attn)
    config = model.config
    parameters = model.num_parameters()
    inputs = synthetic_views(config, batch_size, device, args.channels_last)
    build_time = time.perf_counter() - build_start

    counted = None
    if args.count_flops and (config.backbone_config.model_type == "resnet" or attn in ("sdpa", "eager")):
        counted = counted_forward_flops(model, inputs)
    analytic = vit_forward_flops(config)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if mode == "trainer":
        warmup_time, elapsed, last_loss = _time_trainer(model, args, inputs, batch_size, device)
    elif mode in END_TO_END_MODES:
        del inputs
        feed = _EndToEndInputs(config, args, batch_size, device, args.warmup_steps + args.steps + 1,
                               decode_on_device=mode == "end-to-end-decode")
        warmup_time, elapsed, last_loss = _time_loop(model, args, device, lambda: feed.next(), host_syncs=False)
        del feed
    else:
        warmup_time, elapsed, last_loss = _time_loop(model, args, device, lambda: inputs, mode == "host-syncs")

    step_time = elapsed / args.steps
    flops_per_image = analytic if analytic is not None else counted
    train_flops = 3 * flops_per_image * batch_size if flops_per_image else None
    return {
        "model": name,
        "mode": mode,
        "parameters_m": parameters / 1e6,
        "batch_size": batch_size,
        "views": f"{config.num_global_views}x{config.global_image_size} + {config.num_local_views}x"
                 f"{config.local_image_size}",
        "attention": attn if config.backbone_config.model_type != "resnet" else "-",
        "compile": args.compile,
        "activation_checkpointing": args.activation_checkpointing,
        "channels_last": args.channels_last,
        "step_time_s": step_time,
        "images_per_s": batch_size / step_time,
        "forward_gflops_per_image_analytic": analytic / 1e9 if analytic else None,
        "forward_gflops_per_image_counted": counted / 1e9 if counted else None,
        "train_tflops_per_step": train_flops / 1e12 if train_flops else None,
        "achieved_tflops": train_flops / step_time / 1e12 if train_flops else None,
        "mfu": train_flops / step_time / peak if (train_flops and peak) else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "build_s": build_time,
        "warmup_s": warmup_time,
        "timed_steps": args.steps,
        "last_loss": last_loss,
    }  # the model, optimizer and inputs are freed with this frame


# ----------------------------------------------------------------------------------------------------------- output
def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| model | mode | params (M) | batch | views | attention | compile | ckpt | ch-last | step (s) | images/s | "
        "fwd GFLOP/img (analytic / counted) | TFLOP/s | MFU | peak mem (GiB) |",
        "|---|---|---:|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r.get('mode', '')} | | | | | | | | | | | | | failed: {r['error']} |")
            continue
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['parameters_m']:.1f} | {r['batch_size']} | {r['views']} | "
            f"{r['attention']} | "
            f"{'yes' if r['compile'] else 'no'} | {'yes' if r['activation_checkpointing'] else 'no'} | "
            f"{'yes' if r['channels_last'] else 'no'} | {r['step_time_s']:.4f} | {r['images_per_s']:.1f} | "
            f"{_fmt(r['forward_gflops_per_image_analytic'], '.4g')} / "
            f"{_fmt(r['forward_gflops_per_image_counted'], '.4g')}"
            f" | {_fmt(r['achieved_tflops'], '.4g')} | {_fmt(r['mfu'] and 100 * r['mfu'], '.1f')}"
            f"{'%' if r['mfu'] else ''} | {_fmt(r['peak_memory_gib'], '.1f')} |"
        )
    return "\n".join(lines)


def run_guarded(name: str, args: argparse.Namespace, device: torch.device, attn: str, peak: float | None,
                mode: str) -> dict:
    """`run_model`, falling back from FlashAttention-2 to SDPA; a failure becomes a row instead of a crash."""
    try:
        return run_model(name, args, device, attn, peak, mode)
    except Exception as error:  # one model failing (e.g. flash_attn) must not lose the others' numbers
        if attn == "flash_attention_2" and not isinstance(error, torch.cuda.OutOfMemoryError):
            print(f"  {name}: failed with flash_attention_2 ({type(error).__name__}: {error}); retrying with sdpa",
                  flush=True)
            try:
                return run_model(name, args, device, "sdpa", peak, mode)
            except Exception as second:
                error = second
        return {"model": name, "mode": mode, "error": f"{type(error).__name__}: {error}"[:200]}


def print_result(result: dict) -> None:
    name = f"{result['model']} ({result['mode']})"
    if "error" in result:
        print(f"  {name}: {result['error']}", flush=True)
        return
    mfu = "n/a" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
    print(f"  {name}: batch {result['batch_size']}, {result['step_time_s']:.4f} s/step, "
          f"{result['images_per_s']:.1f} images/s, MFU {mfu} (build {result['build_s']:.1f} s, warm-up "
          f"{result['warmup_s']:.1f} s, loss {result['last_loss']:.4f})", flush=True)
    analytic, counted = result["forward_gflops_per_image_analytic"], result["forward_gflops_per_image_counted"]
    if analytic and counted:
        print(f"  {name}: forward GFLOP per image, analytic {analytic:.6g} vs FlopCounterMode {counted:.6g} "
              f"(ratio {analytic / counted:.4f})", flush=True)


def write_results(
    output: Path, env: dict, args: argparse.Namespace, attn: str, peak_text: str, results: list[dict]
) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, "arguments": vars(args), "attention": attn, "peak": peak_text,
               "mfu_formula": MFU_FORMULA, "results": results}
    output.write_text(json.dumps(payload, indent=2, default=str))
    output.with_suffix(".md").write_text(f"{markdown_table(results)}\n\n{MFU_FORMULA}\n")


def environment(device: torch.device) -> dict[str, str]:
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": str(torch.version.cuda),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "flash_attn": "not installed",
    }
    if importlib.util.find_spec("flash_attn") is not None:
        with contextlib.suppress(Exception):
            import flash_attn

            info["flash_attn"] = flash_attn.__version__
    return info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vit-base-patch16", "vit-huge-patch14"],
                        help=f"Presets ({', '.join(LeJepaConfig.available_presets())}).")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"Images per step for every model (default per model: {DEFAULT_BATCH_SIZES}).")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps.")
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--attn", default="auto", help="'auto' (flash_attention_2 if flash_attn imports, else "
                        "sdpa), 'sdpa', 'flash_attention_2', 'eager'.")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (compilation in warm-up).")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="model.activation_checkpointing_enable() (less memory, about 1/3 more compute).")
    parser.add_argument(
        "--modes", nargs="+", default=["loop"], choices=MODES,
        help="'loop': the tight loop; 'host-syncs': the same with the two host syncs per step of LeJepaTrainer and "
        "Trainer (finite-loss checks after the forward and the backward pass); 'trainer': LeJepaTrainer itself "
        "(bf16, fused AdamW, same clipping) on batches already on the GPU.",
    )
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="Gradient clipping (0: none), as Trainer.")
    parser.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs (ConvNets).")
    parser.add_argument("--no-count-flops", dest="count_flops", action="store_false",
                        help="Skip the FlopCounterMode cross-check.")
    parser.add_argument("--peak-tflops", type=float, default=None, help="Peak bf16 TFLOP/s (default: by GPU name).")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="Seconds: models not started by then are skipped (keeps the run under a timeout).")
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument("--e2e-images", type=int, default=2048, help="end-to-end: JPEG files generated.")
    parser.add_argument("--e2e-size", type=int, nargs=2, default=[1024, 768], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--e2e-dir", type=str, default=None, help="end-to-end: an existing folder of images to use.")
    parser.add_argument("--loader-workers", type=int, default=min(16, os.cpu_count() or 1),
                        help="end-to-end: DataLoader workers.")
    parser.add_argument("--output", type=str, default=None, help="Write the results as JSON (and .md) here.")
    parser.add_argument("--quick", "--dry-run", dest="quick", action="store_true",
                        help="vit-tiny-test at 32/16 px, batch 4, 2 timed steps, 1 warm-up step (CPU or GPU).")
    args = parser.parse_args(argv)
    if args.quick:
        if args.models == parser.get_default("models"):
            args.models = ["vit-tiny-test"]
        args.steps = 2 if args.steps == parser.get_default("steps") else args.steps
        args.warmup_steps = 1 if args.warmup_steps == parser.get_default("warmup_steps") else args.warmup_steps
        if args.e2e_images == parser.get_default("e2e_images"):
            args.e2e_images, args.e2e_size = 16, [256, 192]
        if args.loader_workers == parser.get_default("loader_workers"):
            args.loader_workers = 1
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.quick:
        print("No GPU: this benchmark is meant for one; use --quick (--dry-run) to check it on a CPU.", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls outside autocast (SIGReg is float32 by design)
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    transformers.utils.logging.set_verbosity_error()
    attn = attention_implementation(args.attn)
    peak, peak_text = peak_flops(device, args.peak_tflops)
    env = environment(device)
    print(" | ".join(f"{k}: {v}" for k, v in env.items()), flush=True)
    print(f"attention: {attn}; peak: {peak_text}; bf16 autocast, fused AdamW, {args.warmup_steps} warm-up + "
          f"{args.steps} timed steps", flush=True)
    print(MFU_FORMULA, flush=True)

    temporary = None
    if set(END_TO_END_MODES) & set(args.modes):
        import tempfile

        temporary = tempfile.TemporaryDirectory()
        args.e2e_cache = Path(temporary.name) / "cache"
        if args.e2e_dir is None:
            args.e2e_dir = Path(temporary.name) / "jpegs"
            generate_start = time.perf_counter()
            write_e2e_jpegs(args.e2e_dir, args.e2e_images, *args.e2e_size)
            print(f"end-to-end: wrote {args.e2e_images} JPEGs of {args.e2e_size[0]}x{args.e2e_size[1]} in "
                  f"{time.perf_counter() - generate_start:.0f} s; {args.loader_workers} DataLoader workers",
                  flush=True)

    results = []
    for name in args.models:
        for mode in args.modes:
            if args.time_budget and time.perf_counter() - start > args.time_budget:
                print(f"  {name} ({mode}): skipped, the time budget of {args.time_budget:.0f} s is spent", flush=True)
                results.append({"model": name, "mode": mode, "error": "skipped (time budget)"})
                continue
            print(f"  {name} ({mode}): running ...", flush=True)
            result = run_guarded(name, args, device, attn, peak, mode)
            results.append(result)
            if args.output:  # after every run, so that a timeout loses nothing already measured
                write_results(Path(args.output), env, args, attn, peak_text, results)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            print_result(result)

    for result in results:  # end-to-end throughput as a fraction of the synthetic-input loop's, same model
        if result.get("mode") in END_TO_END_MODES and "error" not in result:
            loop = next((r for r in results if r["model"] == result["model"] and r.get("mode") == "loop"
                         and "error" not in r and r["batch_size"] == result["batch_size"]), None)
            if loop is not None:
                result["fraction_of_synthetic"] = result["images_per_s"] / loop["images_per_s"]
                print(f"  {result['model']}: {result['mode']} {result['images_per_s']:.1f} images/s = "
                      f"{100 * result['fraction_of_synthetic']:.1f}% of the synthetic-input loop "
                      f"({loop['images_per_s']:.1f} images/s)", flush=True)
    if temporary is not None:
        temporary.cleanup()
    table = markdown_table(results)
    print()
    print(table)
    print(f"\nTotal {time.perf_counter() - start:.0f} s.")
    if args.output:
        write_results(Path(args.output), env, args, attn, peak_text, results)
    return results


if __name__ == "__main__":
    main()
