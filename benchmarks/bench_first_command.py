#!/usr/bin/env python
"""
What one training step of the first command (`python run_pretraining.py --output_dir outputs/photos`) costs on a CPU,
for candidate recipes, and what the final three-row evaluation costs.

On a shared machine wall time depends on the load; CPU time (`time.process_time`, one torch thread) much less so. For
each candidate (a backbone size and a number of local views), on the built-in photos with the recipe's augmentations:

- **data**: CPU seconds to decode and augment one batch of `--batch-size` images (what the DataLoader workers do);
- **model**: CPU seconds of one forward, backward and AdamW step on that batch (the main process), the median of
  `--repeats` steps after one warm-up step;
- **estimate**: `steps * (data + model) / cores`, the wall time of the training on `--cores` idle cores when the
  workers and the main process keep them busy (the workers make the batches while the main process trains).

Then the evaluation of the three rows (LeJEPA-shaped random backbone, random backbone, raw pixels: embedding both
splits, k-NN and the logistic-regression probe), in CPU seconds.

Usage:

```bash
python benchmarks/bench_first_command.py              # the candidates of BENCHMARKS.md, "The first command"
python benchmarks/bench_first_command.py --quick      # one tiny candidate, a smoke test
```
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining  # noqa: E402
from trainer import MultiCropCollator, MultiCropTransform, load_photos_dataset, prepare_pretraining_dataset  # noqa: E402
from trainer.evaluation import RawPixelEmbedding, default_image_processor, evaluate_embeddings  # noqa: E402

CANDIDATES = {
    "vit-tiny-test (h32, 2 layers), 6 local": ({}, {}),
    "h64, 4 layers, 6 local": ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                                "num_attention_heads": 4}, {}),
    "h64, 4 layers, 2 local": ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                                "num_attention_heads": 4}, {"num_local_views": 2}),
    "h64, 4 layers, 4 local": ({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
                                "num_attention_heads": 4}, {"num_local_views": 4}),
}


def build_config(backbone: dict, config: dict) -> LeJepaConfig:
    lejepa_config = LeJepaConfig.from_preset("vit-tiny-test", **config)
    if backbone:
        lejepa_config.backbone_config.update(backbone)
        lejepa_config = LeJepaConfig.from_dict(lejepa_config.to_dict())
    return lejepa_config


def measure(name: str, config: LeJepaConfig, train, batch_size: int, repeats: int, steps: int, cores: int) -> dict:
    transform = MultiCropTransform.from_lejepa_config(config, image_processor=default_image_processor(32))
    prepared = prepare_pretraining_dataset(train, transform, "image", None)
    collate = MultiCropCollator()
    data_times = []
    for repeat in range(repeats):
        start = time.process_time()
        batch = collate([prepared[(repeat * batch_size + i) % len(prepared)] for i in range(batch_size)])
        data_times.append(time.process_time() - start)
    inputs = {key: batch[key] for key in ("pixel_values", "local_pixel_values") if key in batch}
    torch.manual_seed(0)
    model = LeJepaForPreTraining(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    model_times = []
    for step in range(repeats + 1):
        start = time.process_time()
        model(**inputs, step=step).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model_times.append(time.process_time() - start)
    data, step_time = statistics.median(data_times), statistics.median(model_times[1:])
    return {
        "candidate": name,
        "parameters": model.num_parameters(),
        "data_cpu_s": data,
        "model_cpu_s": step_time,
        "estimate_s": steps * (data + step_time) / cores,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=600, help="Steps of the estimate.")
    parser.add_argument("--cores", type=int, default=2, help="Idle cores of the estimate.")
    parser.add_argument("--quick", action="store_true", help="One tiny candidate, small batches: a smoke test.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        candidates = {"vit-tiny-test, 2 local": ({}, {"num_local_views": 2})}
        photos = load_photos_dataset(image_size=32, train_crops_per_photo=4, test_crops_per_photo=2)
        args.batch_size, args.repeats = 8, 1
    else:
        candidates = CANDIDATES
        photos = load_photos_dataset()
    rows = [
        measure(name, build_config(*spec), photos["train"], args.batch_size, args.repeats, args.steps, args.cores)
        for name, spec in candidates.items()
    ]
    print(f"| candidate | parameters | data, CPU s / batch of {args.batch_size} | model step, CPU s | "
          f"{args.steps} steps on {args.cores} idle cores (estimate) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['candidate']} | {row['parameters']:,} | {row['data_cpu_s']:.2f} | {row['model_cpu_s']:.3f} | "
              f"{row['estimate_s'] / 60:.1f} min |")

    processor = default_image_processor(32)
    torch.manual_seed(0)
    backbone = LeJepaForPreTraining(build_config(*next(iter(candidates.values())))).lejepa
    evaluation = {}
    for name, model in (("model (one row)", backbone), ("raw pixels", RawPixelEmbedding(32))):
        start = time.process_time()
        evaluate_embeddings(model, photos["train"], photos["test"], processor)
        evaluation[name] = time.process_time() - start
    print("\n| evaluation row | CPU s |\n|---|---:|")
    for name, seconds in evaluation.items():
        print(f"| {name} | {seconds:.1f} |")
    result = {"rows": rows, "evaluation_cpu_s": evaluation}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
