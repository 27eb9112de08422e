#!/usr/bin/env python
"""
Views made on the device (`augment_on_device`) against views made in DataLoader workers (the CPU path), on this CPU.

Sections (`--sections`, all by default), each a side-by-side comparison in one run:

1. `decode`: CPU milliseconds (thread time, 1 thread) to turn one 1024 x 768 JPEG into the bounded `uint8` image the
   device path needs (`DecodeResizeTransform`'s size, 184,320 pixels for 2 x 224 + 6 x 96 views): Pillow's full
   decode then resize, Pillow's reduced-size decode (`Image.draft`, libjpeg DCT scaling: what `decode_image(
   min_pixels=...)` does), `torchvision.io.decode_jpeg` (libjpeg-turbo) then an antialiased tensor resize,
   torchcodec's `decode_jpeg` then `DecodeResizeTransform.resize_on_device` (what `decode_on_device` does on a device
   without nvJPEG, such as this CPU); and, as a floor, Pillow's decode at libjpeg's smallest scale (1/8: mostly the
   entropy decoding, which no scaling saves).
2. `loader`: the real loader (`load_pretraining_dataset(train_dir=...)` -> `prepare_pretraining_dataset` ->
   `MultiCropCollator` in a `DataLoader`) on a folder of 1024 x 768 JPEGs, with the CPU path's `MultiCropTransform`,
   with the device path's `DecodeResizeTransform`, and with it under `decode_on_device` (the worker only reads each
   JPEG's bytes and header), interleaved: images per second and images per worker CPU-second (the workers' user +
   system time from `/proc`).
3. `augment`: the device augmentation's own cost on this CPU (`DeviceMultiCrop` on a batch of decoded images, 1 and 2
   threads), and the choice of crop: `torchvision.ops.roi_align` (adaptive sampling) against
   `kornia.geometry.transform.crop_and_resize`, time and mean absolute difference from torchvision's antialiased
   `resized_crop` (the CPU path's crop) for the same boxes.
4. `view-sizes`: where the CPU default switches paths: CPU milliseconds per image (thread time, 1 thread) of the
   workers' views (`MultiCropTransform`) and of the batched pass (`DeviceMultiCrop`, on the `DecodeResizeTransform`
   images), for the same JPEGs at view sizes from 32 + 16 to 224 + 96 px (`trainer.arguments.
   CPU_DEVICE_VIEWS_MAX_SIZE`).
5. `small-run`: wall time per training step of `LeJepaTrainer` on a folder of small images (the digits, 32 px PNGs),
   batch 128, 2 x 32 + 4 x 16 views, a ViT of hidden size 96: today's default (views in 2 DataLoader workers that
   restart every epoch) against persistent workers and against views made on the device (here the CPU), in
   interleaved runs; every run crosses at least one epoch boundary.

Usage (from the repository root):

```bash
python benchmarks/bench_device_views.py                     # everything (about 15 minutes on 2 busy cores)
python benchmarks/bench_device_views.py --sections small-run --repeats 3
python benchmarks/bench_device_views.py --quick             # tiny sizes, seconds: a smoke test
```
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]  # the packages, and bench_data

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from bench_data import loader_throughput, natural_looking_image, write_jpegs  # noqa: E402
from transformers import TrainerCallback, ViTConfig  # noqa: E402

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining  # noqa: E402
from trainer import LeJepaTrainer, LeJepaTrainingArguments  # noqa: E402
from trainer.data import (  # noqa: E402
    DecodeResizeTransform,
    MultiCropCollator,
    MultiCropConfig,
    MultiCropTransform,
    load_digits_dataset,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
)
from trainer.data.device_views import DeviceMultiCrop, view_generator  # noqa: E402

SECTIONS = ("decode", "loader", "augment", "view-sizes", "small-run")
# (global, local) view sides of the `view-sizes` section.
VIEW_SIZES = ((32, 16), (64, 32), (96, 48), (128, 64), (224, 96))
QUICK_DEFAULTS = {
    "num_images": 6, "width": 256, "height": 192, "batch_size": 4, "num_batches": 10, "repeats": 1,
    "decode_repeats": 2,
    "augment_batch": 4, "global_size": 64, "local_size": 32, "small_images": 48, "small_batch": 8, "small_steps": 4,
    "small_hidden": 32, "small_layers": 1,
}
# The small-image run's configurations: (name, views on the device, DataLoader workers, persistent workers).
SMALL_RUNS = (
    ("CPU views, 2 workers restarted every epoch (before)", False, 2, False),
    ("CPU views, 2 persistent workers", False, 2, True),
    ("device views, main process (0 workers)", True, 0, False),
    ("device views, 1 persistent worker decoding", True, 1, True),
)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@contextlib.contextmanager
def threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------------- decode
def decode_section(args: argparse.Namespace, config: MultiCropConfig) -> dict[str, float]:
    """Thread-CPU ms per JPEG of three ways to get the device path's bounded uint8 image."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    from trainer.data import decode_image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(min(args.num_images, 8)):
        buffer = io.BytesIO()
        natural_looking_image(args.width, args.height, rng).save(buffer, format="JPEG", quality=90)
        blobs.append(buffer.getvalue())
    transform = DecodeResizeTransform(config)

    def pillow_full(data: bytes) -> torch.Tensor:
        return transform(decode_image(data))["images"]

    def pillow_reduced(data: bytes) -> torch.Tensor:
        return transform(decode_image(data, min_pixels=transform.min_pixels))["images"]

    def torchvision_decode(data: bytes) -> torch.Tensor:
        pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        width, height = transform.output_size(pixels.shape[-1], pixels.shape[-2])
        return F.resize(pixels, [height, width], antialias=True)

    def torchcodec_decode(data: bytes) -> torch.Tensor:  # what `decode_on_device` runs on a device without nvJPEG
        from trainer.data.device_views import decode_jpegs

        pixels = decode_jpegs([np.frombuffer(data, dtype=np.uint8).copy()], torch.device("cpu"))[0]
        return transform.resize_on_device(pixels)

    def pillow_eighth(data: bytes) -> torch.Tensor:
        # libjpeg's smallest scale: mostly the entropy decoding, which no DCT scaling saves (too few pixels to use)
        image = PIL.Image.open(io.BytesIO(data))
        image.draft("RGB", (image.width // 8, image.height // 8))
        image.load()
        return transform(image)["images"]

    functions = {"Pillow, full decode + resize": pillow_full,
                 "Pillow, reduced-size decode (Image.draft) [+ resize]": pillow_reduced,
                 "torchvision.io.decode_jpeg + antialiased resize": torchvision_decode,
                 "torchcodec decode_jpeg on the CPU + resize_on_device (decode_on_device's work)": torchcodec_decode,
                 "Pillow at 1/8 scale (the entropy-decoding floor, not usable)": pillow_eighth}
    times: dict[str, list[float]] = {name: [] for name in functions}
    shapes = {name: tuple(function(blobs[0]).shape) for name, function in functions.items()}
    with threads(1):
        for repeat in range(args.decode_repeats):
            for name in list(functions) if repeat % 2 == 0 else list(reversed(functions)):
                start = time.thread_time()
                for data in blobs:
                    functions[name](data)
                times[name].append(1e3 * (time.thread_time() - start) / len(blobs))
    result = {name: median(values) for name, values in times.items()}
    print("\n### Decode to the bounded uint8 image (1 thread, CPU ms per image, median of "
          f"{args.decode_repeats} interleaved repeats of {len(blobs)} JPEGs {args.width}x{args.height})\n")
    print("| method | output (C, H, W) | CPU ms per image | images per CPU-second |")
    print("|---|---|---:|---:|")
    for name, value in result.items():
        print(f"| {name} | {shapes[name]} | {value:.2f} | {1e3 / value:.0f} |")
    return result


# --------------------------------------------------------------------------------------------------------- loader
def loader_section(args: argparse.Namespace, config: MultiCropConfig, train_dir: Path, cache: Path) -> dict:
    """Images per worker CPU-second of the real loader, CPU path vs device path, 1 worker, interleaved."""
    dataset, image_column, _ = load_pretraining_dataset(train_dir=str(train_dir), cache_dir=str(cache))
    datasets_by_path = {
        "CPU path (MultiCropTransform: all views in the worker)": prepare_pretraining_dataset(
            dataset, MultiCropTransform(config), image_column),
        "device path (DecodeResizeTransform: decode + resize once)": prepare_pretraining_dataset(
            dataset, DecodeResizeTransform(config), image_column),
        "device path, decode_on_device (the worker reads the JPEG's bytes and header)": prepare_pretraining_dataset(
            dataset, DecodeResizeTransform(config, decode_on_device=True), image_column),
    }
    rates: dict[str, list[float]] = {name: [] for name in datasets_by_path}
    cpu_rates: dict[str, list[float]] = {name: [] for name in datasets_by_path}
    for repeat in range(args.repeats):
        for name in list(datasets_by_path) if repeat % 2 == 0 else list(reversed(datasets_by_path)):
            rate, cpu_rate = loader_throughput(datasets_by_path[name], 1, args, seed=repeat)
            rates[name].append(rate)
            if cpu_rate is not None:  # None: less CPU time than /proc's 10 ms resolution
                cpu_rates[name].append(cpu_rate)
            print(f"  repeat {repeat + 1}/{args.repeats}, {name}: {rate:.1f} images/s, {cpu_rate or float('nan'):.1f} "
                  "images per worker CPU-second", flush=True)
    names = list(datasets_by_path)
    result = {name: {"images_per_s": median(rates[name]), "images_per_cpu_s": median(cpu_rates[name])}
              for name in names}
    ratio = result[names[1]]["images_per_cpu_s"] / result[names[0]]["images_per_cpu_s"]
    bytes_ratio = result[names[2]]["images_per_cpu_s"] / result[names[0]]["images_per_cpu_s"]
    print(f"\n### Loader, 1 DataLoader worker, batch {args.batch_size}, {args.num_batches} timed batches, median of "
          f"{args.repeats} interleaved repeats\n")
    print("| path | images/s (wall) | images per worker CPU-second | CPU seconds per image |")
    print("|---|---:|---:|---:|")
    for name in names:
        value = result[name]
        print(f"| {name} | {value['images_per_s']:.1f} | {value['images_per_cpu_s']:.1f} | "
              f"{1 / value['images_per_cpu_s']:.4f} |")
    print(f"\nCPU per image, CPU path / device path: **{ratio:.1f}x**; CPU path / device path with decode_on_device "
          f"(the decoding then runs on the device; the decode section has its cost on a CPU): **{bytes_ratio:.0f}x**")
    return {"paths": result, "cpu_ratio": ratio, "decode_on_device_cpu_ratio": bytes_ratio}


# -------------------------------------------------------------------------------------------------------- augment
def augment_section(args: argparse.Namespace, config: MultiCropConfig, train_dir: Path) -> dict:
    """DeviceMultiCrop's own cost per image on this CPU, and roi_align vs kornia's crop_and_resize."""
    import kornia.geometry.transform as kornia_transform
    from torchvision.ops import roi_align
    from torchvision.transforms.v2 import functional as F

    from trainer.data import decode_image

    transform = DecodeResizeTransform(config)
    paths = sorted(train_dir.glob("*.jpg"))[: args.augment_batch]
    examples = [transform(decode_image(str(path), min_pixels=transform.min_pixels)) for path in paths]
    while len(examples) < args.augment_batch:
        examples += examples[: args.augment_batch - len(examples)]
    batch = MultiCropCollator()(examples)
    views = DeviceMultiCrop(config)
    result: dict[str, float] = {}
    for count in (1, 2):
        with threads(count):
            views(batch["images"], batch["image_sizes"], view_generator(0, 0))  # warm-up
            walls, cpus = [], []
            for repeat in range(args.decode_repeats):
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                views(batch["images"], batch["image_sizes"], view_generator(0, repeat + 1))
                walls.append(1e3 * (time.perf_counter() - start_wall) / args.augment_batch)
                cpus.append(1e3 * (time.process_time() - start_cpu) / args.augment_batch)
        result[f"wall_ms_{count}"], result[f"cpu_ms_{count}"] = median(walls), median(cpus)

    # The crop alone: roi_align vs kornia, against torchvision's antialiased resized_crop (the CPU path's crop).
    pixels = batch["images"].float().div_(255)
    parameters = views.sample_parameters(len(pixels), view_generator(0, 0))
    crops = {}
    with threads(1):
        for key, side in (("pixel_values", config.global_image_size), ("local_pixel_values", config.local_image_size)):
            boxes = views.crop_boxes(batch["image_sizes"], parameters[key])
            index = parameters[key].image_index
            rois = torch.cat([index[:, None].to(boxes), boxes], 1).float()
            left, top, right, bottom = boxes.unbind(1)
            corners = torch.stack([torch.stack([left, top], 1), torch.stack([right - 1, top], 1),
                                   torch.stack([right - 1, bottom - 1], 1), torch.stack([left, bottom - 1], 1)],
                                  1).float()
            reference = torch.stack([
                F.resized_crop(pixels[b], t, lft, btm - t, r - lft, [side, side], antialias=True)
                for b, (lft, t, r, btm) in zip(index.tolist(), boxes.long().tolist())
            ])
            methods = {
                "torchvision.ops.roi_align (sampling_ratio=-1, aligned=True)":
                    lambda: roi_align(pixels, rois, (side, side), 1.0, -1, True),  # noqa: B023
                "kornia.geometry.transform.crop_and_resize (bilinear)":
                    lambda: kornia_transform.crop_and_resize(pixels[index], corners, (side, side)),  # noqa: B023
            }
            for name, method in methods.items():
                times = []
                for _ in range(max(2, args.decode_repeats)):
                    start = time.thread_time()
                    output = method()
                    times.append(time.thread_time() - start)
                crops[key, name] = (1e3 * median(times) / len(index), (output - reference).abs().mean().item())
    print(f"\n### Device augmentation on this CPU ({args.augment_batch} images of about "
          f"{tuple(batch['images'].shape[-2:])}, {config.num_global_views} x {config.global_image_size} + "
          f"{config.num_local_views} x {config.local_image_size} views, median of {args.decode_repeats})\n")
    print("| threads | wall ms per image | CPU ms per image |")
    print("|---:|---:|---:|")
    for count in (1, 2):
        print(f"| {count} | {result[f'wall_ms_{count}']:.1f} | {result[f'cpu_ms_{count}']:.1f} |")
    print("\n| crop method | views | CPU ms per view (1 thread) | mean abs. difference from torchvision "
          "resized_crop(antialias=True), 0..1 scale |")
    print("|---|---|---:|---:|")
    for (key, name), (ms, error) in crops.items():
        print(f"| {name} | {'global' if key == 'pixel_values' else 'local'} | {ms:.3f} | {error:.4f} |")
    result["crops"] = {f"{key}: {name}": value for (key, name), value in crops.items()}
    return result


def view_sizes_section(args: argparse.Namespace, train_dir: Path) -> dict:
    """CPU ms per image of the workers' views and of the batched pass, 1 thread, at each of `VIEW_SIZES`."""
    from trainer.data import decode_image

    paths = sorted(train_dir.glob("*.jpg"))[: args.augment_batch]
    images = [decode_image(str(path)) for path in paths]
    print("\n### CPU cost per image by view size (1 thread, median of "
          f"{args.decode_repeats}; {len(images)} JPEGs of {args.width} x {args.height})\n")
    print("| global + local view side | workers' views (`MultiCropTransform`), CPU ms | batched pass "
          "(`DeviceMultiCrop`), CPU ms | batched / workers |")
    print("|---|---:|---:|---:|")
    result = {}
    with threads(1):
        for global_size, local_size in VIEW_SIZES:
            config = MultiCropConfig(global_image_size=global_size, local_image_size=local_size)
            workers_views, batched = MultiCropTransform(config), DeviceMultiCrop(config)
            decode = DecodeResizeTransform(config)
            batch = MultiCropCollator()([decode(image) for image in images])
            batched(batch["images"], batch["image_sizes"], view_generator(0, 0))  # warm-up
            times: dict[str, list[float]] = {"workers": [], "batched": []}
            for repeat in range(args.decode_repeats):
                start = time.thread_time()
                for image in images:
                    workers_views(image)
                times["workers"].append(1e3 * (time.thread_time() - start) / len(images))
                start = time.thread_time()
                batched(batch["images"], batch["image_sizes"], view_generator(0, repeat + 1))
                times["batched"].append(1e3 * (time.thread_time() - start) / len(images))
            cpu, device = median(times["workers"]), median(times["batched"])
            result[f"{global_size}+{local_size}"] = {"workers_ms": cpu, "batched_ms": device}
            print(f"| {global_size} + {local_size} | {cpu:.2f} | {device:.2f} | {device / cpu:.2f} |", flush=True)
    return result


# ------------------------------------------------------------------------------------------------------ small run
def tree_cpu_seconds() -> float:
    """CPU seconds of this process, its live children (DataLoader workers) and its reaped children."""
    import resource

    import psutil

    process = psutil.Process()
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return total + reaped.ru_utime + reaped.ru_stime


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.tree_cpu: list[float] = []

    def on_step_end(self, *unused, **kwargs):
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.tree_cpu.append(tree_cpu_seconds())


def small_run_once(args: argparse.Namespace, train_dir: Path, cache: Path, on_device: bool, workers: int,
                   persistent: bool) -> tuple[float, float, float]:
    """Mean wall, main-process CPU and all-process (main + workers) CPU seconds per step after 2 warm-up steps."""
    hidden = args.small_hidden
    backbone = ViTConfig(image_size=32, patch_size=8, hidden_size=hidden, num_hidden_layers=args.small_layers,
                         num_attention_heads=max(1, hidden // 32), intermediate_size=4 * hidden, qkv_bias=True,
                         layer_norm_eps=1e-6)
    config = LeJepaConfig(backbone_config=backbone.to_dict(), global_image_size=32, local_image_size=16,
                          num_local_views=4, projector_hidden_size=512, projector_output_size=64,
                          local_crop_scale=(0.2, 0.5))
    torch.manual_seed(0)
    model = LeJepaForPreTraining(config)
    views = MultiCropConfig.from_lejepa_config(config, hue=0.0, saturation=0.0)  # the built-in digits recipe
    dataset, image_column, _ = load_pretraining_dataset(train_dir=str(train_dir), cache_dir=str(cache))
    transform = DecodeResizeTransform(views) if on_device else MultiCropTransform(views)
    dataset = prepare_pretraining_dataset(dataset, transform, image_column)
    callback = StepTimes()
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = LeJepaTrainingArguments(
            output_dir=output_dir, use_cpu=True, max_steps=args.small_steps,
            per_device_train_batch_size=args.small_batch, dataloader_num_workers=workers,
            dataloader_persistent_workers=persistent, augment_on_device=on_device,
            report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=10, learning_rate=2e-3,
        )
        trainer = LeJepaTrainer(model=model, args=training_args, train_dataset=dataset,
                                data_collator=MultiCropCollator(return_labels=False), callbacks=[callback],
                                device_views=DeviceMultiCrop(views) if on_device else None)
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
    warmup = 2
    steps = len(callback.times) - 1 - warmup
    wall = (callback.times[-1] - callback.times[warmup]) / steps
    cpu = (callback.cpu[-1] - callback.cpu[warmup]) / steps
    tree_cpu = (callback.tree_cpu[-1] - callback.tree_cpu[warmup]) / steps
    return wall, cpu, tree_cpu


def write_small_images(folder: Path, count: int) -> None:
    digits = load_digits_dataset(image_size=32)["train"]
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        digits[index % len(digits)]["image"].save(folder / f"digit_{index:05d}.png")


def small_run_section(args: argparse.Namespace, root: Path, cache: Path) -> dict:
    train_dir = root / "small"
    write_small_images(train_dir, args.small_images)
    runs = [SMALL_RUNS[index] for index in sorted(set([0] + args.small_runs))]  # always with "before"
    walls: dict[str, list[float]] = {run[0]: [] for run in runs}
    cpus: dict[str, list[float]] = {run[0]: [] for run in runs}
    tree_cpus: dict[str, list[float]] = {run[0]: [] for run in runs}
    for repeat in range(args.repeats):
        for name, on_device, workers, persistent in runs if repeat % 2 == 0 else reversed(runs):
            wall, cpu, tree_cpu = small_run_once(args, train_dir, cache, on_device, workers, persistent)
            walls[name].append(wall)
            cpus[name].append(cpu)
            tree_cpus[name].append(tree_cpu)
            print(f"  repeat {repeat + 1}/{args.repeats}, {name}: {wall:.3f} s per step (CPU: main process "
                  f"{cpu:.3f} s, with workers {tree_cpu:.3f} s; load {os.getloadavg()[0]:.1f})", flush=True)
    before = SMALL_RUNS[0][0]
    steps_per_epoch = args.small_images / args.small_batch
    print(f"\n### Small-image run: {args.small_images} PNGs of 32 px (digits), batch {args.small_batch}, "
          f"2 x 32 + 4 x 16 views, ViT hidden {args.small_hidden}, {args.small_layers} layers, {args.small_steps} "
          "steps per run "
          f"({steps_per_epoch:.1f} steps per epoch), the first 2 intervals dropped; median of {args.repeats} "
          "interleaved repeats\n")
    print("| configuration | wall s per step | speed-up over before (wall) | CPU s per step: main process | main + "
          "workers | CPU before / CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    result = {}
    for name in walls:
        wall, cpu, tree_cpu = median(walls[name]), median(cpus[name]), median(tree_cpus[name])
        speedup, cpu_ratio = median(walls[before]) / wall, median(tree_cpus[before]) / tree_cpu
        result[name] = {"wall": wall, "cpu": cpu, "tree_cpu": tree_cpu, "speedup": speedup, "cpu_ratio": cpu_ratio}
        print(f"| {name} | {wall:.3f} | {speedup:.2f}x | {cpu:.3f} | {tree_cpu:.3f} | {cpu_ratio:.2f}x |")
    return result


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--num-images", type=int, default=48, help="JPEG files generated for decode/loader/augment.")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=16, help="Loader batch size.")
    parser.add_argument("--num-batches", type=int, default=8, help="Timed batches per loader run.")
    parser.add_argument("--repeats", type=int, default=2, help="Interleaved repeats (loader, small-run).")
    parser.add_argument("--decode-repeats", type=int, default=5, help="Repeats of the decode and augment timings.")
    parser.add_argument("--augment-batch", type=int, default=16, help="Images per device-augmentation batch.")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--small-images", type=int, default=1437, help="Small PNGs (the digits training split).")
    parser.add_argument("--small-batch", type=int, default=128)
    parser.add_argument("--small-steps", type=int, default=14, help="Steps per small-image run (>= 1 epoch).")
    parser.add_argument("--small-hidden", type=int, default=96)
    parser.add_argument("--small-layers", type=int, default=4)
    parser.add_argument("--small-runs", type=int, nargs="+", default=list(range(len(SMALL_RUNS))),
                        help="Which small-image configurations (indices into: " + "; ".join(
                            f"{index}: {run[0]}" for index, run in enumerate(SMALL_RUNS)) + "); 0 always runs.")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke test that runs in seconds.")
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**QUICK_DEFAULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    transformers.utils.logging.set_verbosity_error()
    config = MultiCropConfig(global_image_size=args.global_size, local_image_size=args.local_size)
    print(f"## Device views vs CPU views ({datetime.date.today().isoformat()})\n")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.2f} at the start; torch {torch.__version__}, Pillow {PIL.__version__}")
    print(f"- views {config.num_global_views} x {config.global_image_size} + {config.num_local_views} x "
          f"{config.local_image_size}; device path target {DecodeResizeTransform(config).target_pixels} pixels",
          flush=True)
    results: dict = {}
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        cache = root / "cache"
        train_dir = root / "jpegs"
        if {"loader", "augment", "view-sizes"} & set(args.sections):
            write_jpegs(train_dir, args.num_images, args.width, args.height)
        if "decode" in args.sections:
            results["decode"] = decode_section(args, config)
        if "loader" in args.sections:
            results["loader"] = loader_section(args, config, train_dir, cache)
        if "augment" in args.sections:
            results["augment"] = augment_section(args, config, train_dir)
        if "view-sizes" in args.sections:
            results["view_sizes"] = view_sizes_section(args, train_dir)
        if "small-run" in args.sections:
            results["small_run"] = small_run_section(args, root, cache)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return results


if __name__ == "__main__":
    main()
