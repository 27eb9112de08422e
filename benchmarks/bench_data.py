#!/usr/bin/env python
"""
Throughput of the LeJEPA data path, from full-size JPEG files to batches of multi-crop views, per DataLoader worker.

The path is the real one: an `imagefolder` dataset from `trainer.data.load_pretraining_dataset(train_dir=...)`,
`prepare_pretraining_dataset` (robust decoding + `MultiCropTransform.from_lejepa_config(LeJepaConfig())`: 2 x 224 px
global and 6 x 96 px local views with the full augmentation recipe) and `MultiCropCollator`, in a
`torch.utils.data.DataLoader` with 0, 1 and 2 workers. The images are generated first: smooth random colour fields
with finer detail and noise, 1024 x 768, saved as JPEG quality 90 (about the size and entropy of a photo).

Reported:

1. images per second and images per second per worker (for 0 workers: in the main process, with one torch thread
   like a worker), medians over interleaved repeats; the first batch of each worker is left out (start-up);
2. where one image's time goes, in one process: decoding the JPEG, then the transform;
3. copies made by the collator: (a) the bytes allocated while collating one batch, against the bytes of the batch
   (1.0 means each view is copied once); (b) collate time against a bare `torch.stack` of the same tensors; (c) what
   happens to a batch collated in a DataLoader worker: it is sent to the main process through shared memory, and a
   batch stacked into ordinary memory is copied once more into shared memory when it is sent (`default_collate`
   avoids this by stacking straight into shared memory). Timed: stack then move to shared memory, against stack into
   shared memory.

Usage:

```bash
python benchmarks/bench_data.py                     # 64 JPEGs, batch 16, 0/1/2 workers, 3 repeats
python benchmarks/bench_data.py --quick             # 8 small JPEGs, a smoke test
python benchmarks/bench_data.py --workers 1 2 4 --num-batches 24
```
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from modeling_lejepa import LeJepaConfig  # noqa: E402
from trainer.data import (  # noqa: E402
    MultiCropCollator,
    MultiCropTransform,
    decode_image,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
    to_rgb_image,
)

MIB = 2**20
QUICK_DEFAULTS = {
    "num_images": 8, "width": 256, "height": 192, "batch_size": 4, "num_batches": 3, "repeats": 1,
    "workers": [0, 1], "collate_repeats": 3, "transfer_repeats": 1, "transfer_batches": 3, "breakdown_repeats": 2,
    "global_size": 64, "local_size": 32,
}


# ----------------------------------------------------------------------------------------------------------- data
def natural_looking_image(width: int, height: int, rng: np.random.Generator) -> PIL.Image.Image:
    """Smooth colour gradients (a bicubic upsampling of a coarse random grid), finer detail, and pixel noise."""
    coarse = PIL.Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize(
        (width, height), PIL.Image.Resampling.BICUBIC
    )
    detail = PIL.Image.fromarray(rng.integers(0, 256, (height // 24, width // 24, 3), dtype=np.uint8)).resize(
        (width, height), PIL.Image.Resampling.BICUBIC
    )
    pixels = 0.75 * np.asarray(coarse, dtype=np.float32) + 0.25 * np.asarray(detail, dtype=np.float32)
    pixels += rng.normal(0.0, 6.0, pixels.shape).astype(np.float32)
    return PIL.Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_jpegs(folder: Path, num_images: int, width: int, height: int, quality: int = 90, seed: int = 0) -> float:
    """Writes `num_images` JPEG files into `folder`; returns their mean size in bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = []
    for index in range(num_images):
        path = folder / f"image_{index:04d}.jpg"
        natural_looking_image(width, height, rng).save(path, format="JPEG", quality=quality)
        sizes.append(path.stat().st_size)
    return statistics.fmean(sizes)


def build_dataset(train_dir: Path, cache_dir: Path, transform: MultiCropTransform):
    """The real path: `load_pretraining_dataset(train_dir=...)` then `prepare_pretraining_dataset`."""
    dataset, image_column, label_column = load_pretraining_dataset(train_dir=str(train_dir), cache_dir=str(cache_dir))
    return prepare_pretraining_dataset(dataset, transform, image_column, label_column)


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # DataLoader already does this in workers; kept explicit


# ---------------------------------------------------------------------------------------------------- throughput
def _process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, from `/proc/<pid>/stat` (Linux); `None` elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _workers_cpu_seconds(iterator) -> float | None:
    if not hasattr(iterator, "_workers"):  # the main process does the work
        return time.process_time()
    times = [_process_cpu_seconds(worker.pid) for worker in iterator._workers]
    return None if any(t is None for t in times) else sum(times)


def _batch_size(batch: dict[str, torch.Tensor]) -> int:
    """Images of a batch of views (`pixel_values`), or of uint8 images (`images`) and JPEG bytes left to the device
    (`jpeg_bytes`, `decode_on_device`)."""
    if "pixel_values" in batch:
        return batch["pixel_values"].shape[0]
    return (batch["images"].shape[0] if "images" in batch else 0) + len(batch.get("jpeg_bytes") or [])


def loader_throughput(dataset, num_workers: int, args: argparse.Namespace, seed: int) -> tuple[float, float | None]:
    """
    Images per second of a DataLoader over `args.num_batches` batches after the first batch of every worker, and
    images per CPU-second of the processes doing the work (the workers, or the main process with 0 workers).
    """
    generator = torch.Generator().manual_seed(seed)
    total = args.batch_size * (args.num_batches + max(1, num_workers))
    indices = torch.randint(len(dataset), (total,), generator=generator).tolist()  # repeats: any length
    loader = DataLoader(
        dataset, batch_size=args.batch_size, sampler=indices, num_workers=num_workers,
        collate_fn=MultiCropCollator(return_labels=False), worker_init_fn=_one_thread if num_workers else None,
    )
    threads = torch.get_num_threads()
    if num_workers == 0:
        torch.set_num_threads(1)  # like a worker
    try:
        iterator = iter(loader)
        for _ in range(max(1, num_workers)):  # start-up: the first batch of every worker
            next(iterator)
        cpu_start = _workers_cpu_seconds(iterator)
        start = time.perf_counter()
        # views made in the workers, or uint8 images (or JPEG bytes) for views made on the device
        images = sum(_batch_size(next(iterator)) for _ in range(args.num_batches))
        elapsed = time.perf_counter() - start
        cpu_end = _workers_cpu_seconds(iterator)
        del iterator
    finally:
        torch.set_num_threads(threads)
    measured = cpu_start is not None and cpu_end is not None and cpu_end > cpu_start  # /proc counts 10 ms ticks
    cpu_rate = images / (cpu_end - cpu_start) if measured else None
    return images / elapsed, cpu_rate


def transform_breakdown(transform: MultiCropTransform, image: PIL.Image.Image, repeats: int) -> list[tuple]:
    """
    Median CPU milliseconds (thread time) of each augmentation on one global and one local view (1 thread), and its
    expected cost per
    image: times the number of views and the probability with which the recipe applies it. Each is timed on the uint8
    view (what `MultiCropTransform` does) and on the same view in float32 on the 0..1 scale (an alternative).
    """
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as tvf

    from trainer.data.views import _per_view, _SeparableGaussianBlur

    c = transform.config
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pixels = tvf.pil_to_tensor(image)

    def ms(function, argument) -> float:
        times = []
        for _ in range(repeats):
            start = time.thread_time()
            function(argument)
            times.append(time.thread_time() - start)
        return 1e3 * statistics.median(times)

    kernel = c.blur_kernel_size or 2 * math.ceil(3 * c.blur_sigma[1]) + 1
    global_blur = sum(_per_view(c.global_blur_prob, i) for i in range(c.num_global_views))
    global_solarize = sum(_per_view(c.global_solarize_prob, i) for i in range(c.num_global_views))
    rows = []
    try:
        views: dict[tuple[str, str], dict[str, float | None]] = {}
        for kind, size, scale in (("global", c.global_image_size, c.global_crop_scale),
                                  ("local", c.local_image_size, c.local_crop_scale)):
            crop = v2.RandomResizedCrop(size, scale=scale, ratio=c.crop_ratio, antialias=True)
            blur = _SeparableGaussianBlur(min(kernel, 2 * size - 1), c.blur_sigma)
            uint8_view = crop(pixels)
            for dtype, view in (("uint8", uint8_view), ("float32", uint8_view.float().div_(255.0))):
                threshold = c.solarize_threshold / 255.0 if view.is_floating_point() else c.solarize_threshold
                views[kind, dtype] = {
                    "RandomResizedCrop from the full image": ms(crop, pixels) if dtype == "uint8" else None,
                    "horizontal flip": ms(tvf.horizontal_flip, view),
                    "ColorJitter: brightness + contrast + saturation": ms(
                        lambda v: tvf.adjust_saturation(tvf.adjust_contrast(tvf.adjust_brightness(v, 1.2), 1.2), 1.1),
                        view),
                    "ColorJitter: hue": ms(lambda v: tvf.adjust_hue(v, 0.05), view),
                    "grayscale": ms(lambda v: tvf.rgb_to_grayscale(v, 3), view),
                    "Gaussian blur (separable, 13 px)": ms(blur, view),
                    "solarize": ms(lambda v, t=threshold: tvf.solarize(v, t), view),
                }
        vg, vl = c.num_global_views, c.num_local_views

        def both(probability: float) -> tuple[float, float]:
            return probability * vg, probability * vl

        weights = {
            "RandomResizedCrop from the full image": both(1.0),
            "horizontal flip": both(c.horizontal_flip_prob),
            "ColorJitter: brightness + contrast + saturation": both(c.color_jitter_prob),
            "ColorJitter: hue": both(c.color_jitter_prob),
            "grayscale": both(c.grayscale_prob),
            "Gaussian blur (separable, 13 px)": (global_blur, c.local_blur_prob * vl),
            "solarize": (global_solarize, c.local_solarize_prob * vl),
        }
        for name, (global_weight, local_weight) in weights.items():
            row = [name]
            for dtype in ("uint8", "float32"):
                global_ms, local_ms = views["global", dtype][name], views["local", dtype][name]
                expected = None if global_ms is None else global_weight * global_ms + local_weight * local_ms
                row += [global_ms, local_ms, expected]
            rows.append(tuple(row))
        rows.append(("whole MultiCropTransform (measured)", None, None, ms(transform, image), None, None, None))
    finally:
        torch.set_num_threads(threads)
    return rows


def stage_times(train_dir: Path, transform: MultiCropTransform, limit: int) -> dict[str, float]:
    """
    Median CPU milliseconds (this thread's CPU time, so that other processes on the machine do not count) per image to
    decode a file and to make its views, in this process with 1 torch thread.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    decode, views = [], []
    try:
        for path in sorted(train_dir.glob("*.jpg"))[:limit]:
            data = path.read_bytes()
            start = time.thread_time()
            image = to_rgb_image(decode_image({"bytes": data, "path": str(path)}))
            middle = time.thread_time()
            transform(image)
            end = time.thread_time()
            decode.append(middle - start)
            views.append(end - middle)
    finally:
        torch.set_num_threads(threads)
    return {"decode_ms": 1e3 * statistics.median(decode), "transform_ms": 1e3 * statistics.median(views)}


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


# ------------------------------------------------------------------------------------------------- collator copies
def example_views(transform: MultiCropTransform, train_dir: Path, batch_size: int) -> list[dict[str, torch.Tensor]]:
    paths = sorted(train_dir.glob("*.jpg"))
    return [transform(to_rgb_image(decode_image(str(paths[i % len(paths)])))) for i in range(batch_size)]


@contextlib.contextmanager
def _quiet_stderr():
    """Silences the profiler's C++ start/stop lines (file descriptor 2) for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def bytes_allocated(function, *args) -> int:
    """
    Bytes allocated on the CPU by `function(*args)` (torch profiler): the net allocation of every operator, plus the
    allocations made outside operators (`[memory]` events, e.g. shared memory). Memory freed by `function` itself
    before it returns is not counted.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        result = function(*args)
    del result
    return sum(max(event.self_cpu_memory_usage, 0) for event in profiler.events())


class RecordingTransform:
    """Wraps a transform and remembers the storage addresses of the tensors it returns."""

    def __init__(self, transform: MultiCropTransform):
        self.transform, self.config, self.pointers = transform, transform.config, set()

    def __call__(self, image):
        views = self.transform(image)
        self.pointers.update(value.untyped_storage().data_ptr() for value in views.values())
        return views


def datasets_passes_views_through(train_dir: Path, cache_dir: Path, transform: MultiCropTransform) -> bool:
    """Whether the examples that `datasets` hands to the collator are the transform's own tensors (no copy)."""
    recording = RecordingTransform(transform)
    dataset = build_dataset(train_dir, cache_dir, recording)
    examples = dataset.__getitems__([0, 1]) if hasattr(dataset, "__getitems__") else [dataset[0], dataset[1]]
    return all(example[key].untyped_storage().data_ptr() in recording.pointers
               for example in examples for key in ("pixel_values", "local_pixel_values"))


def bare_stack(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([example[key] for example in examples]) for key in ("pixel_values", "local_pixel_values")}


class FixedViews(torch.utils.data.Dataset):
    """Returns ready-made views (no decoding, no transform): a DataLoader over it measures collate + transfer."""

    def __init__(self, examples: list[dict[str, torch.Tensor]], length: int):
        self.examples, self.length = examples, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.examples[index % len(self.examples)]


def transfer_ms_per_batch(examples, collator, batch_size: int, num_batches: int) -> float:
    """Milliseconds per batch through a 1-worker DataLoader that only collates and sends ready-made views."""
    loader = DataLoader(FixedViews(examples, batch_size * (num_batches + 1)), batch_size=batch_size, num_workers=1,
                        collate_fn=collator)
    iterator = iter(loader)
    next(iterator)  # worker start-up
    start = time.perf_counter()
    count = sum(1 for _ in iterator)
    return 1e3 * (time.perf_counter() - start) / count


def timed_ms(function, examples) -> tuple[float, float]:
    """Wall and thread-CPU milliseconds of one call."""
    start_wall, start_cpu = time.perf_counter(), time.thread_time()
    function(examples)
    return 1e3 * (time.perf_counter() - start_wall), 1e3 * (time.thread_time() - start_cpu)


def collate_checks(
    examples: list[dict[str, torch.Tensor]], repeats: int, transfer_repeats: int, transfer_batches: int
) -> dict[str, float]:
    batch = MultiCropCollator(return_labels=False)(examples)
    batch_bytes = sum(batch[key].numel() * batch[key].element_size() for key in ("pixel_values", "local_pixel_values"))
    inputs_shared = any(
        batch[key].untyped_storage().data_ptr() == example[key].untyped_storage().data_ptr()
        for example in examples for key in ("pixel_values", "local_pixel_values")
    )
    allocated = bytes_allocated(MultiCropCollator(return_labels=False), examples)
    stack_allocated = bytes_allocated(bare_stack, examples)
    functions = {"collator": MultiCropCollator(return_labels=False), "bare stack": bare_stack}
    walls: dict[str, list[float]] = {name: [] for name in functions}
    cpus: dict[str, list[float]] = {name: [] for name in functions}
    for repeat in range(repeats):  # interleaved, alternating which goes first
        for name in list(functions) if repeat % 2 == 0 else list(reversed(functions)):
            wall, cpu = timed_ms(functions[name], examples)
            walls[name].append(wall)
            cpus[name].append(cpu)
    median = {name: statistics.median(values) for name, values in walls.items()}
    median_cpu = {name: statistics.median(values) for name, values in cpus.items()}
    transfer = {"plain": [], "shared": []}
    collators = {"plain": False, "shared": True}  # MultiCropCollator's `shared_memory`
    for repeat in range(transfer_repeats):  # interleaved, alternating which goes first
        for name in list(collators) if repeat % 2 == 0 else list(reversed(collators)):
            collator = MultiCropCollator(return_labels=False, shared_memory=collators[name])
            transfer[name].append(transfer_ms_per_batch(examples, collator, len(examples), transfer_batches))
    return {
        "batch_mib": batch_bytes / MIB,
        "allocated_ratio": allocated / batch_bytes,
        "stack_allocated_ratio": stack_allocated / batch_bytes,
        "output_aliases_input": inputs_shared,
        "collator_ms": median["collator"],
        "stack_ms": median["bare stack"],
        "collate_over_stack": median["collator"] / median["bare stack"],
        "collator_cpu_ms": median_cpu["collator"],
        "stack_cpu_ms": median_cpu["bare stack"],
        "collate_over_stack_cpu": median_cpu["collator"] / median_cpu["bare stack"],
        "transfer_plain_ms": statistics.median(transfer["plain"]),
        "transfer_shared_ms": statistics.median(transfer["shared"]),
        "transfer_repeats": transfer_repeats,
    }


# ----------------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--num-images", type=int, default=64, help="JPEG files generated.")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-batches", type=int, default=12, help="Timed batches per DataLoader run.")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved repeats of every worker count.")
    parser.add_argument("--collate-repeats", type=int, default=16)
    parser.add_argument("--breakdown-repeats", type=int, default=20, help="Repeats of each augmentation timing.")
    parser.add_argument("--transfer-repeats", type=int, default=6, help="Repeats of the worker-transfer A/B.")
    parser.add_argument("--transfer-batches", type=int, default=20, help="Batches per worker-transfer run.")
    parser.add_argument("--global-size", type=int, default=None, help="Default: LeJepaConfig()'s (224).")
    parser.add_argument("--local-size", type=int, default=None, help="Default: LeJepaConfig()'s (96).")
    parser.add_argument("--data-dir", type=str, default=None, help="Where to write the JPEGs (default: a temp dir).")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke test that runs in seconds.")
    if parser.parse_known_args(argv)[0].quick:  # tiny defaults; explicit flags still win
        parser.set_defaults(**QUICK_DEFAULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    sizes = {}
    if args.global_size:
        sizes["global_image_size"] = args.global_size
    if args.local_size:
        sizes["local_image_size"] = args.local_size
    config = LeJepaConfig(**sizes)
    transform = MultiCropTransform.from_lejepa_config(config)
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(args.data_dir) if args.data_dir else Path(temporary)
        train_dir = root / "images"
        mean_size = write_jpegs(train_dir, args.num_images, args.width, args.height, args.quality)
        dataset = build_dataset(train_dir, Path(temporary) / "cache", transform)
        print(f"{args.num_images} JPEGs of {args.width}x{args.height} (quality {args.quality}, mean "
              f"{mean_size / 1024:.0f} KiB); views {config.num_global_views} x {config.global_image_size} + "
              f"{config.num_local_views} x {config.local_image_size}; batch {args.batch_size}", flush=True)

        rates: dict[int, list[float]] = {workers: [] for workers in args.workers}
        cpu_rates: dict[int, list[float]] = {workers: [] for workers in args.workers}
        for repeat in range(args.repeats):
            order = args.workers if repeat % 2 == 0 else list(reversed(args.workers))
            for workers in order:
                rate, cpu_rate = loader_throughput(dataset, workers, args, seed=repeat)
                rates[workers].append(rate)
                if cpu_rate is not None:
                    cpu_rates[workers].append(cpu_rate)
                print(f"  repeat {repeat + 1}/{args.repeats}, {workers} worker(s): {rate:.1f} images/s, "
                      f"{_fmt(cpu_rate)} images per worker CPU-second", flush=True)
        stages = stage_times(train_dir, transform, limit=min(args.num_images, 16))
        first_image = to_rgb_image(decode_image(str(sorted(train_dir.glob("*.jpg"))[0])))
        breakdown = transform_breakdown(transform, first_image, args.breakdown_repeats)
        examples = example_views(transform, train_dir, args.batch_size)
        copies = collate_checks(examples, args.collate_repeats, args.transfer_repeats, args.transfer_batches)
        copies["datasets_no_copy"] = datasets_passes_views_through(train_dir, Path(temporary) / "cache", transform)

    print(f"\n## Data pipeline ({datetime.date.today().isoformat()})\n")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, Python "
          f"{platform.python_version()}, Pillow {PIL.__version__}")
    print(f"- {args.num_images} JPEGs {args.width}x{args.height} q{args.quality} (mean {mean_size / 1024:.0f} KiB), "
          f"imagefolder -> prepare_pretraining_dataset -> MultiCropTransform(LeJepaConfig()) -> MultiCropCollator, "
          f"batch {args.batch_size}, {args.num_batches} timed batches per run, {args.repeats} interleaved repeats")
    print()
    print("| DataLoader workers | images/s (median) | images/s per worker | min / max images/s | images per worker "
          "CPU-second (median) |")
    print("|---:|---:|---:|---:|---:|")
    for workers, values in rates.items():
        median = statistics.median(values)
        label = "0 (main process, 1 thread)" if workers == 0 else str(workers)
        cpu = statistics.median(cpu_rates[workers]) if cpu_rates[workers] else None
        print(f"| {label} | {median:.1f} | {median / max(1, workers):.1f} | {min(values):.1f} / {max(values):.1f} | "
              f"{_fmt(cpu)} |")
    per_image = stages["decode_ms"] + stages["transform_ms"]
    print(f"\nOne image in one process (1 thread, CPU time, median of {min(args.num_images, 16)}): decode "
          f"{stages['decode_ms']:.1f} ms + views {stages['transform_ms']:.1f} ms = {per_image:.1f} ms, i.e. "
          f"{1e3 / per_image:.1f} images/s per core.")
    print()
    g, loc = config.global_image_size, config.local_image_size
    print(f"| augmentation (1 thread, CPU ms, median of {args.breakdown_repeats}) | ms per {g} px view | ms per "
          f"{loc} px view | expected ms per image | float32: ms per {g} px view | ms per {loc} px view | expected ms "
          "per image |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, *values in breakdown:
        print(f"| {name} | " + " | ".join(_fmt(value, ".2f") for value in values) + " |")
    print()
    print("| collator check (one batch) | value |")
    print("|---|---:|")
    print(f"| batch size in memory | {copies['batch_mib']:.1f} MiB |")
    print(f"| bytes allocated by MultiCropCollator / bytes of the batch | {copies['allocated_ratio']:.3f} |")
    print(f"| bytes allocated by a bare torch.stack / bytes of the batch | {copies['stack_allocated_ratio']:.3f} |")
    print(f"| `datasets` hands the collator the transform's own tensors (no copy before the collator) | "
          f"{copies['datasets_no_copy']} |")
    print(f"| batch shares memory with the transform's tensors | {copies['output_aliases_input']} |")
    print(f"| collate time / bare torch.stack time, wall (median of {args.collate_repeats}) | "
          f"{copies['collate_over_stack']:.3f} ({copies['collator_ms']:.1f} / {copies['stack_ms']:.1f} ms) |")
    print(f"| same, thread CPU time | {copies['collate_over_stack_cpu']:.3f} ({copies['collator_cpu_ms']:.1f} / "
          f"{copies['stack_cpu_ms']:.1f} ms) |")
    print(f"| 1-worker DataLoader of ready-made views, ms per batch (collate + send), median of "
          f"{copies['transfer_repeats']}: plain torch.stack | {copies['transfer_plain_ms']:.1f} ms |")
    print(f"| same, MultiCropCollator stacking straight into shared memory (its default) | "
          f"{copies['transfer_shared_ms']:.1f} ms |")
    return {"rates": rates, "cpu_rates": cpu_rates, "stages": stages, "breakdown": breakdown, "copies": copies}


if __name__ == "__main__":
    main()
