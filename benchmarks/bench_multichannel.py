#!/usr/bin/env python
"""
Worker CPU per image for images that are not 8-bit RGB: 13-band `uint16` TIFF tiles against 8-bit RGB images of the
same size, through the real data path of views made on the device (`augment_on_device`).

The path: `prepare_pretraining_dataset` on an `imagefolder` of the files, with `DecodeResizeTransform` (the workers'
part: decode and bound the size; for the tiles `read_image_array` with `tifffile`, then a `float32` tensor multiplied
by the rescale factor), then `MultiCropCollator` (the padded canvas). Timed in the main process with one torch thread,
as a DataLoader worker runs: CPU seconds (`time.process_time`) per image, median over interleaved repeats. Also
reported: the bytes per image handed to the device (a `float32` canvas of 13 bands against `uint8` RGB), and the CPU
cost of `DeviceMultiCrop` per image on this CPU (2 x 224 + 6 x 96 views; on a GPU it is the GPU's work).

For reference, both also go through the workers' views (`MultiCropTransform`, the CPU path: every view made in the
worker; for the tiles, crops, flip, blur and the per-channel jitter on 13 bands).

Usage:

```bash
python benchmarks/bench_multichannel.py              # 32 tiles of 256 x 256, 5 repeats
python benchmarks/bench_multichannel.py --quick      # 4 tiles of 64 x 64, a smoke test
```
"""

from __future__ import annotations

import argparse
import os
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
import tifffile  # noqa: E402
import torch  # noqa: E402

from trainer.data import (  # noqa: E402
    DecodeResizeTransform,
    MultiCropCollator,
    MultiCropConfig,
    MultiCropTransform,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
)
from trainer.data.device_views import DeviceMultiCrop, view_generator  # noqa: E402
from trainer.data.sources import inspect_dataset_images  # noqa: E402


def write_images(folder: Path, count: int, size: int, bands: int) -> dict[str, Path]:
    """`count` tiles of `size` x `size`: 13-band uint16 TIFF (smooth fields plus noise, like reflectance), and the
    same scenes as 8-bit RGB JPEG (quality 90) and PNG."""
    rng = np.random.default_rng(0)
    folders = {name: folder / name for name in ("tiff13", "jpeg", "png")}
    for path in folders.values():
        path.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        coarse = rng.random((8, 8, bands))
        field = np.stack([np.asarray(PIL.Image.fromarray(coarse[..., b].astype(np.float32)).resize(
            (size, size), PIL.Image.Resampling.BICUBIC)) for b in range(bands)], axis=-1)
        tile = np.clip(field * 4000 + rng.normal(0, 50, field.shape) + 500, 0, 65535).astype(np.uint16)
        tifffile.imwrite(folders["tiff13"] / f"tile{index}.tif", tile, photometric="minisblack")
        rgb = PIL.Image.fromarray((tile[..., :3] / 4500 * 255).clip(0, 255).astype(np.uint8))
        rgb.save(folders["jpeg"] / f"tile{index}.jpg", quality=90)
        rgb.save(folders["png"] / f"tile{index}.png")
    return folders


def cpu_per_image(dataset, collator, count: int) -> float:
    """CPU seconds per image to fetch (decode + transform) every row of a prepared map-style dataset and collate."""
    start = time.process_time()
    rows = [dataset[index] for index in range(count)]
    collator(rows)
    return (time.process_time() - start) / count


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--bands", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="4 tiles of 64 x 64, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_images, args.size, args.repeats = 4, 64, 1
    torch.set_num_threads(1)
    global_size, local_size = (224, 96) if not args.quick else (32, 16)

    with tempfile.TemporaryDirectory() as tmp:
        folders = write_images(Path(tmp), args.num_images, args.size, args.bands)
        paths: dict[str, tuple] = {}
        for name, folder in folders.items():
            dataset, column, _ = load_pretraining_dataset(train_dir=str(folder))
            image_format = inspect_dataset_images(dataset, column)
            settings = {"global_image_size": global_size, "local_image_size": local_size}
            if image_format.pixel_format == "float":
                settings.update(pixel_format="float", rescale_factor=image_format.rescale_factor,
                                image_mean=image_format.image_mean, image_std=image_format.image_std)
            views = MultiCropConfig(**settings)
            paths[f"{name}, device path (DecodeResizeTransform)"] = (
                prepare_pretraining_dataset(dataset, DecodeResizeTransform(views), column), views)
            paths[f"{name}, CPU path (MultiCropTransform)"] = (
                prepare_pretraining_dataset(dataset, MultiCropTransform(views), column), views)
        collator = MultiCropCollator()
        timings: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.repeats):  # interleaved
            for name, (dataset, _) in paths.items():
                timings[name].append(cpu_per_image(dataset, collator, args.num_images))
        results = {}
        for name, (dataset, views) in paths.items():
            row = {"cpu_ms_per_image": 1000 * statistics.median(timings[name])}
            if "device path" in name:
                batch = collator([dataset[index] for index in range(args.num_images)])
                canvas = batch["images"]
                row["bytes_per_image"] = canvas.element_size() * canvas[0].numel()
                device = DeviceMultiCrop(views)
                start = time.process_time()
                device(canvas, batch["image_sizes"], view_generator(0, 0))
                row["device_views_cpu_ms_per_image"] = 1000 * (time.process_time() - start) / args.num_images
            results[name] = row

    print(f"\n{args.num_images} tiles of {args.size} x {args.size}, {args.bands} bands (uint16 TIFF) vs 8-bit RGB; "
          f"views {global_size}/{local_size} px; 1 torch thread; median of {args.repeats} repeats\n")
    print("| images, path | worker CPU ms per image | bytes per image to the device | DeviceMultiCrop on this CPU, "
          "ms per image |")
    print("|---|---:|---:|---:|")
    for name, row in results.items():
        size = f"{row['bytes_per_image']:,}" if "bytes_per_image" in row else "(views)"
        device = f"{row['device_views_cpu_ms_per_image']:.1f}" if "device_views_cpu_ms_per_image" in row else ""
        print(f"| {name} | {row['cpu_ms_per_image']:.2f} | {size} | {device} |")
    return results


if __name__ == "__main__":
    main()
