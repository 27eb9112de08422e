#!/usr/bin/env python
"""
Does LeJEPA's validation loss rank runs as their downstream accuracy does? Short pretraining runs on the built-in
digits, varying `lambda_sigreg`, the learning rate, the number of local views, the projector size and the number of
steps; for each run, the final validation loss (`LeJepaTrainer.evaluate`: fixed views and SIGReg directions, eval-mode
BatchNorm, on the digits "test" split, no labels used) against the frozen linear-probe accuracy (`run_evaluation`'s
logistic regression, trained on the "train" split's embeddings, measured on "test").

Reported: Spearman's rank correlation (`scipy.stats.spearmanr`) between the validation loss and the probe accuracy
over all runs and within groups of equal `lambda_sigreg` (the loss scale depends on lambda), and the same for the
final training loss (the mean over the last logging window, on random views and directions) and for each term of the
validation loss. A good loss ranks runs in the opposite order of the accuracy: correlation near -1.

Usage:

```bash
python benchmarks/loss_study.py                       # all runs, writes docs/loss_study.{json,md,png}
python benchmarks/loss_study.py --quick --work_dir /tmp/quick   # 3 runs of 5 steps, a smoke test
```
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining  # noqa: E402
from trainer import (  # noqa: E402
    LeJepaTrainer,
    LeJepaTrainingArguments,
    MultiCropCollator,
    MultiCropTransform,
    load_digits_dataset,
    prepare_pretraining_dataset,
)
from trainer.data import prepare_validation_dataset  # noqa: E402
from trainer.evaluation import default_image_processor, evaluate_embeddings  # noqa: E402

# The reference run; every other run changes one or two of these (the built-in digits recipe of run_pretraining.py,
# shortened).
BASE = {"lambda_sigreg": 0.05, "learning_rate": 2e-3, "num_local_views": 6, "projector_output_size": 16,
        "projector_hidden_size": 64, "max_steps": 120}
VARIATIONS = [
    {},
    {"lambda_sigreg": 0.01}, {"lambda_sigreg": 0.02}, {"lambda_sigreg": 0.1}, {"lambda_sigreg": 0.2},
    {"lambda_sigreg": 0.5},
    {"learning_rate": 3e-4}, {"learning_rate": 5e-3},
    {"num_local_views": 0}, {"num_local_views": 2},
    {"projector_output_size": 64, "projector_hidden_size": 256},
    {"max_steps": 30}, {"max_steps": 200},
    {"lambda_sigreg": 0.2, "max_steps": 30},
]
BATCH_SIZE = 64
EVAL_BATCH_SIZE = 120  # the 360 validation digits in 3 SIGReg blocks


def run_one(settings: dict, output_dir: str, digits, image_processor) -> dict:
    config = LeJepaConfig.from_preset(
        "vit-tiny-test", local_crop_scale=(0.2, 0.5), lambda_sigreg=settings["lambda_sigreg"],
        num_local_views=settings["num_local_views"], projector_output_size=settings["projector_output_size"],
        projector_hidden_size=settings["projector_hidden_size"],
    )
    torch.manual_seed(0)
    model = LeJepaForPreTraining(config)
    transform = MultiCropTransform.from_lejepa_config(config, image_processor=image_processor, hue=0.0, saturation=0.0)
    train = prepare_pretraining_dataset(digits["train"], transform, "image")
    validation = prepare_validation_dataset(digits["test"], transform, "image")
    args = LeJepaTrainingArguments(
        output_dir=output_dir, max_steps=settings["max_steps"], learning_rate=settings["learning_rate"],
        per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=EVAL_BATCH_SIZE, save_strategy="no",
        report_to="none", logging_steps=min(10, settings["max_steps"]), dataloader_num_workers=1, use_cpu=True,
        seed=0, disable_tqdm=True,
    )
    trainer = LeJepaTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                            data_collator=MultiCropCollator(return_labels=False))
    start = time.perf_counter()
    trainer.train()
    if trainer.stopped_by_signal is not None:  # an interrupted run is not a result (and is not cached)
        raise SystemExit(128 + trainer.stopped_by_signal)
    train_logs = [entry for entry in trainer.state.log_history if "prediction_loss" in entry]
    metrics = trainer.evaluate()
    probe = evaluate_embeddings(model.lejepa, digits["train"], digits["test"], image_processor)
    return {
        **settings,
        "eval_loss": metrics["eval_loss"],
        "eval_prediction_loss": metrics["eval_prediction_loss"],
        "eval_sigreg_loss": metrics["eval_sigreg_loss"],
        "train_loss": train_logs[-1]["loss"],
        "linear_probe_accuracy": probe["linear_probe_accuracy"],
        "knn_accuracy": probe["knn_accuracy"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def spearman(x: list[float], y: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def correlations(runs: list[dict]) -> dict:
    accuracy = [r["linear_probe_accuracy"] for r in runs]
    result = {"overall": {key: spearman([r[key] for r in runs], accuracy)
                          for key in ("eval_loss", "train_loss", "eval_prediction_loss", "eval_sigreg_loss")}}
    for lambd in sorted({r["lambda_sigreg"] for r in runs}):
        group = [r for r in runs if r["lambda_sigreg"] == lambd]
        if len(group) >= 3:
            result[f"lambda={lambd:g}"] = {
                "runs": len(group),
                "eval_loss": spearman([r["eval_loss"] for r in group], [r["linear_probe_accuracy"] for r in group]),
                "train_loss": spearman([r["train_loss"] for r in group], [r["linear_probe_accuracy"] for r in group]),
            }
    return result


def write_outputs(runs: list[dict], stats: dict, output_prefix: Path, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "torch": torch.__version__, "base": BASE, "batch_size": BATCH_SIZE,
               "eval_batch_size": EVAL_BATCH_SIZE, "runs": runs, "spearman": stats}
    output_prefix.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    lambdas = sorted({r["lambda_sigreg"] for r in runs})
    colours = plt.cm.viridis(np.linspace(0, 0.9, len(lambdas)))
    panels = ((axes[0], "eval_loss", "validation loss"), (axes[1], "train_loss", "final training loss"))
    for axis, key, title in panels:
        for lambd, colour in zip(lambdas, colours):
            group = [r for r in runs if r["lambda_sigreg"] == lambd]
            axis.scatter([r[key] for r in group], [r["linear_probe_accuracy"] for r in group], color=colour,
                         label=f"lambda {lambd:g}")
        rho = stats["overall"][key]
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # overlapping minor labels
        axis.set_xlabel(title)
        axis.set_ylabel("linear-probe accuracy")
        axis.set_title(f"{title}: Spearman {rho:.2f}" if rho is not None else title)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output_prefix.with_suffix(".png"), dpi=110)
    plt.close(figure)

    lines = ["| lambda | lr | local views | projector | steps | eval_loss | eval prediction | eval SIGReg | "
             "train loss | linear probe | k-NN |", "|" + " --- |" * 11]
    for r in runs:
        lines.append(
            f"| {r['lambda_sigreg']:g} | {r['learning_rate']:g} | {r['num_local_views']} | "
            f"{r['projector_hidden_size']}-{r['projector_output_size']} | {r['max_steps']} | {r['eval_loss']:.4f} | "
            f"{r['eval_prediction_loss']:.4f} | {r['eval_sigreg_loss']:.3f} | {r['train_loss']:.4f} | "
            f"{r['linear_probe_accuracy']:.3f} | {r['knn_accuracy']:.3f} |"
        )
    lines += ["", "| Spearman with linear-probe accuracy | runs | validation loss | training loss |",
              "| --- | --- | --- | --- |"]
    overall = stats["overall"]
    lines.append(f"| all runs | {len(runs)} | {_fmt(overall['eval_loss'])} | {_fmt(overall['train_loss'])} |")
    for name, group in stats.items():
        if name.startswith("lambda="):
            lines.append(f"| {name} | {group['runs']} | {_fmt(group['eval_loss'])} | {_fmt(group['train_loss'])} |")
    lines.append(f"| all runs, prediction term only | {len(runs)} | {_fmt(overall['eval_prediction_loss'])} | |")
    lines.append(f"| all runs, SIGReg term only | {len(runs)} | {_fmt(overall['eval_sigreg_loss'])} | |")
    baseline = stats["random_init"]
    lines += ["", "Untrained backbone (same frozen evaluation): linear probe "
              f"{baseline['linear_probe_accuracy']:.3f}, k-NN {baseline['knn_accuracy']:.3f}."]
    output_prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 runs of 5 steps (a smoke test).")
    parser.add_argument("--output", default="docs/loss_study", help="Prefix of the .json, .md and .png outputs.")
    parser.add_argument("--work_dir", default="/tmp/lejepa_loss_study", help="Scratch folder of the runs.")
    options = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    digits = load_digits_dataset(image_size=32, seed=0)
    image_processor = default_image_processor(32)
    variations = VARIATIONS[:3] if options.quick else VARIATIONS
    # Finished runs are kept in WORK_DIR/results.jsonl, so that an interrupted study resumes where it stopped.
    os.makedirs(options.work_dir, exist_ok=True)
    cache_file = Path(options.work_dir) / "results.jsonl"
    cached = [json.loads(line) for line in cache_file.read_text().splitlines()] if cache_file.is_file() else []
    runs = []
    for index, change in enumerate(variations):
        settings = {**BASE, **change}
        if options.quick:
            settings["max_steps"] = 5
        result = next((r for r in cached if all(r.get(k) == v for k, v in settings.items())), None)
        if result is None:
            result = run_one(settings, os.path.join(options.work_dir, f"run{index}"), digits, image_processor)
            with cache_file.open("a") as f:
                f.write(json.dumps(result) + "\n")
        runs.append(result)
        print(json.dumps(result), flush=True)
    stats = correlations(runs)
    print(json.dumps(stats, indent=2))
    # the same frozen evaluation of the reference run's backbone at initialisation (no training)
    torch.manual_seed(0)
    untrained = LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test")).lejepa
    baseline = evaluate_embeddings(untrained, digits["train"], digits["test"], image_processor)
    stats["random_init"] = {key: baseline[key] for key in ("linear_probe_accuracy", "knn_accuracy")}
    command = "python benchmarks/loss_study.py" + (" --quick" if options.quick else "")
    write_outputs(runs, stats, Path(options.output), command)
    return {"runs": runs, "spearman": stats}


if __name__ == "__main__":
    main()
