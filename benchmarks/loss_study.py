#!/usr/bin/env python
"""
Does LeJEPA's loss rank runs as their downstream accuracy does, without labels? Pretraining runs of the built-in
photos recipe (`trainer.recipes.BUILTIN_RECIPES["photos"]`, views made on the device as `run_pretraining.py` makes
them on a CPU) that vary `lambda_sigreg`, the learning rate, the weight decay, the number of local views, the
projector and the training length, on two labelled photo sets:

- `photos`: the built-in photos (crops of 17 photographs that ship inside scikit-image, scikit-learn and
  matplotlib; which photograph a held-out crop comes from);
- `wallpapers`: the same task on 27 other photographs, those of Debian's `lomiri-wallpapers-16.04` (15) and
  `mate-backgrounds` (`nature/`, 12) packages (`apt-get install lomiri-wallpapers-16.04 mate-backgrounds`; the test
  suite never needs them).

For each run, after training: the validation loss (`LeJepaTrainer.evaluate` on the held-out crops: fixed views and
SIGReg directions, no labels), once with the projector's BatchNorm on its running statistics (what `evaluate` does)
and once on each evaluated block's own statistics (as in training); the final training loss (the mean over the last
logging window); and the frozen-embedding k-NN and linear-probe accuracies (`trainer.evaluation.evaluate_embeddings`,
the protocol of `run_evaluation.py`), next to those of the untrained backbone.

Reported: Spearman's rank correlation (`scipy.stats.spearmanr`) of each loss with the linear-probe accuracy, overall
and within groups of equal lambda, and of the paper's lambda-corrected criterion C(alpha) = loss / lambda**alpha
(LeJEPA, section 6.2, Eq. 8) for alpha from 0 to 1. A loss that ranks runs as the accuracy does gives a correlation
near -1 (lower loss, higher accuracy).

Each finished run is appended to `WORK_DIR/DATASET.jsonl`; a study that is stopped resumes run by run. The outputs
(`--output` prefix: `.json`, `.md`, `.png`) are rewritten after every run, so that results can be committed as they
come.

Usage:

```bash
python benchmarks/loss_study.py --dataset photos       # 24 runs, writes docs/loss_study_photos.{json,md,png}
python benchmarks/loss_study.py --dataset wallpapers   # 12 runs
python benchmarks/loss_study.py --quick --work_dir /tmp/quick --output /tmp/quick/study   # 3 runs of 5 steps
```
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modeling_lejepa import LeJepaForPreTraining  # noqa: E402
from trainer import (  # noqa: E402
    DecodeResizeTransform,
    DeviceMultiCrop,
    LeJepaTrainer,
    LeJepaTrainingArguments,
    MultiCropCollator,
    MultiCropConfig,
    MultiCropTransform,
    load_photos_dataset,
    prepare_pretraining_dataset,
    prepare_validation_dataset,
)
from trainer.evaluation import default_image_processor, evaluate_embeddings  # noqa: E402
from trainer.recipes import BUILTIN_RECIPES, build_pretraining_config  # noqa: E402

RECIPE = BUILTIN_RECIPES["photos"]
WALLPAPERS = ("/usr/share/backgrounds/*.jpg", "/usr/share/backgrounds/mate/nature/*.jpg")

# Each run changes these settings of the recipe (the recipe's own values where a run does not name one).
LAMBDAS = (0.01, 0.02, 0.05, 0.1, 0.2)
RUNS = {
    "photos": [
        *({"lambda_sigreg": lam} for lam in LAMBDAS),
        *({"lambda_sigreg": lam, "learning_rate": 5e-4} for lam in LAMBDAS),
        *({"lambda_sigreg": lam, "max_steps": 200} for lam in LAMBDAS),
        {"lambda_sigreg": 0.05, "weight_decay": 0.005}, {"lambda_sigreg": 0.05, "weight_decay": 0.3},
        {"lambda_sigreg": 0.05, "num_local_views": 0}, {"lambda_sigreg": 0.05, "num_local_views": 4},
        {"lambda_sigreg": 0.05, "projector": (64, 16)}, {"lambda_sigreg": 0.05, "projector": (1024, 128)},
        {"lambda_sigreg": 0.05, "learning_rate": 5e-3}, {"lambda_sigreg": 0.05, "max_steps": 900},
        {"lambda_sigreg": 0.1, "num_local_views": 4}, {"lambda_sigreg": 0.02, "weight_decay": 0.3},
    ],
    "wallpapers": [
        *({"lambda_sigreg": lam} for lam in LAMBDAS),
        *({"lambda_sigreg": lam, "max_steps": 200} for lam in (0.02, 0.05, 0.1)),
        {"lambda_sigreg": 0.05, "learning_rate": 5e-4}, {"lambda_sigreg": 0.05, "weight_decay": 0.3},
        {"lambda_sigreg": 0.05, "num_local_views": 4}, {"lambda_sigreg": 0.05, "projector": (64, 16)},
    ],
}
ALPHAS = tuple(round(alpha, 1) for alpha in np.linspace(0.0, 1.0, 11))
LOSSES = ("eval_loss", "eval_loss_batch_stats", "train_loss")


def load_dataset(name: str, work_dir: str, seed: int = 0):
    """The labelled splits of `name` ("photos" or "wallpapers"), 64 px crops, held-out cells for "test"; the
    wallpapers' crops are kept in `work_dir` (cutting them from the full-size photographs takes minutes)."""
    if name == "photos":
        return load_photos_dataset(seed=seed)
    saved = Path(work_dir) / f"{name}-dataset"
    if saved.is_dir():
        return datasets.load_from_disk(str(saved))
    files = sorted(path for pattern in WALLPAPERS for path in glob.glob(pattern))
    if len(files) < 20:
        raise FileNotFoundError(
            f"The wallpapers study needs the photographs of Debian's lomiri-wallpapers-16.04 and mate-backgrounds "
            f"packages ({' '.join(WALLPAPERS)}); found {len(files)}. `apt-get install lomiri-wallpapers-16.04 "
            "mate-backgrounds`."
        )
    splits = load_photos_dataset(seed=seed, photo_files=files)
    splits.save_to_disk(str(saved))
    return splits


def recipe_settings(change: dict) -> dict:
    """The settings of a run: the recipe's, with `change`."""
    config = build_pretraining_config(recipe=RECIPE)
    training = RECIPE.training
    settings = {
        "lambda_sigreg": config.lambda_sigreg,
        "learning_rate": training["learning_rate"],
        "weight_decay": training.get("weight_decay", LeJepaTrainingArguments.weight_decay),
        "num_local_views": config.num_local_views,
        "projector": (config.projector_hidden_size, config.projector_output_size),
        "max_steps": training["max_steps"],
        "seed": 42,
    }
    return {**settings, **change}


def batch_statistics_loss(trainer: LeJepaTrainer) -> float:
    """The validation loss with the projector's BatchNorm normalising each evaluated block by its own statistics (as
    in training) instead of the running ones, on a copy of the model (the running statistics stay untouched)."""
    model = trainer.model
    trainer.model = copy.deepcopy(model)
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0  # train-mode BatchNorm: the block's statistics, running ones unchanged

            def keep_training(module: torch.nn.Module, _inputs) -> None:
                module.training = True

            module.register_forward_pre_hook(keep_training)
    try:
        return trainer.evaluate(metric_key_prefix="batch")["batch_loss"]
    finally:
        trainer.model = model


def run_one(settings: dict, output_dir: str, splits, image_processor) -> dict:
    """Trains one run of `settings` on `splits["train"]` and measures its losses and accuracies."""
    hidden, output = settings["projector"]
    config = build_pretraining_config(
        recipe=RECIPE,
        config_overrides=f"lambda_sigreg={settings['lambda_sigreg']},num_local_views={settings['num_local_views']},"
        f"projector_hidden_size={hidden},projector_output_size={output}",
    )
    torch.manual_seed(settings["seed"])
    model = LeJepaForPreTraining(config)
    views = MultiCropConfig.from_lejepa_config(config, image_processor=image_processor, **RECIPE.transform)
    train = prepare_pretraining_dataset(splits["train"], DecodeResizeTransform(views), "image")
    validation = prepare_validation_dataset(splits["test"], MultiCropTransform(views), "image")
    training = {**RECIPE.training, **{k: settings[k] for k in ("learning_rate", "weight_decay", "max_steps")}}
    args = LeJepaTrainingArguments(
        output_dir=output_dir, **training, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        logging_steps=min(25, settings["max_steps"]), seed=settings["seed"],
    )
    trainer = LeJepaTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=validation, data_collator=MultiCropCollator(),
        processing_class=image_processor, augment_on_device=True, device_views=DeviceMultiCrop(views),
    )
    start = time.perf_counter()
    trainer.train()
    if trainer.stopped_by_signal is not None:  # an interrupted run is not a result (and is not cached)
        raise SystemExit(128 + trainer.stopped_by_signal)
    seconds = time.perf_counter() - start
    train_logs = [entry for entry in trainer.state.log_history if "prediction_loss" in entry]
    metrics = trainer.evaluate()
    probe = evaluate_embeddings(model.lejepa, splits["train"], splits["test"], image_processor)
    return {
        **settings,
        "eval_loss": metrics["eval_loss"],
        "eval_prediction_loss": metrics["eval_prediction_loss"],
        "eval_sigreg_loss": metrics["eval_sigreg_loss"],
        "eval_loss_batch_stats": batch_statistics_loss(trainer),
        "train_loss": train_logs[-1]["loss"],
        "linear_probe_accuracy": probe["linear_probe_accuracy"],
        "knn_accuracy": probe["knn_accuracy"],
        "train_seconds": round(seconds, 1),
    }


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation, `None` for fewer than 3 points or a constant side."""
    from scipy.stats import spearmanr

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(spearmanr(x, y).statistic)


def criterion(run: dict, key: str, alpha: float) -> float:
    """The paper's lambda-corrected criterion, `loss / lambda**alpha` (Eq. 8)."""
    return run[key] / run["lambda_sigreg"] ** alpha


def correlations(runs: list[dict]) -> dict:
    """Spearman correlations with the linear-probe accuracy: each loss and C(alpha) over all runs, each loss within
    groups of equal lambda (3 runs or more)."""
    accuracy = [r["linear_probe_accuracy"] for r in runs]
    stats: dict = {"runs": len(runs), "overall": {key: spearman([r[key] for r in runs], accuracy) for key in LOSSES}}
    stats["criterion"] = {
        key: {f"{alpha:g}": spearman([criterion(r, key, alpha) for r in runs], accuracy) for alpha in ALPHAS}
        for key in LOSSES
    }
    stats["by_lambda"] = {}
    for lambd in sorted({r["lambda_sigreg"] for r in runs}):
        group = [r for r in runs if r["lambda_sigreg"] == lambd]
        if len(group) >= 3:
            group_accuracy = [r["linear_probe_accuracy"] for r in group]
            stats["by_lambda"][f"{lambd:g}"] = {
                "runs": len(group), **{key: spearman([r[key] for r in group], group_accuracy) for key in LOSSES}
            }
    return stats


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def write_outputs(runs: list[dict], stats: dict, baseline: dict, output_prefix: Path, options) -> None:
    """The study's `.json` (everything), `.md` (the tables) and `.png` (scatter plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output_prefix.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "command": f"python benchmarks/loss_study.py --dataset {options.dataset}", "dataset": options.dataset,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs", "torch": torch.__version__,
        "recipe": {"preset": RECIPE.preset, "config": RECIPE.config, "backbone": RECIPE.backbone,
                   "transform": RECIPE.transform, "training": RECIPE.training},
        "random_init": baseline, "runs": runs, "spearman": stats,
    }
    output_prefix.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")

    best_alpha = {}
    for key in LOSSES:
        values = {alpha: rho for alpha, rho in stats["criterion"][key].items() if rho is not None}
        best_alpha[key] = min(values, key=values.get) if values else None
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    lambdas = sorted({r["lambda_sigreg"] for r in runs})
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(lambdas))))
    panels = (("eval_loss", "validation loss", 0.0), ("eval_loss", "C(alpha) of the validation loss",
                                                         float(best_alpha["eval_loss"] or 0)),
              ("train_loss", "final training loss", 0.0))
    for axis, (key, title, alpha) in zip(axes, panels):
        for lambd, colour in zip(lambdas, colours):
            group = [r for r in runs if r["lambda_sigreg"] == lambd]
            axis.scatter([criterion(r, key, alpha) for r in group], [r["linear_probe_accuracy"] for r in group],
                         color=colour, label=f"lambda {lambd:g}")
        rho = spearman([criterion(r, key, alpha) for r in runs], [r["linear_probe_accuracy"] for r in runs])
        axis.axhline(baseline["linear_probe_accuracy"], color="grey", linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.set_xlabel(f"{title}" + (f" (alpha {alpha:g})" if alpha else ""))
        axis.set_ylabel("linear-probe accuracy")
        axis.set_title(f"Spearman {_fmt(rho)}")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"{options.dataset}: {len(runs)} runs (dashed: untrained backbone)")
    figure.tight_layout()
    figure.savefig(output_prefix.with_suffix(".png"), dpi=100)
    plt.close(figure)

    lines = [
        "| lambda | lr | wd | local views | projector | steps | eval_loss | eval_loss, batch stats | train loss | "
        "linear probe | k-NN | train s |",
        "|" + " ---: |" * 12,
    ]
    for r in runs:
        lines.append(
            f"| {r['lambda_sigreg']:g} | {r['learning_rate']:g} | {r['weight_decay']:g} | {r['num_local_views']} | "
            f"{r['projector'][0]}-{r['projector'][1]} | {r['max_steps']} | {r['eval_loss']:.4f} | "
            f"{r['eval_loss_batch_stats']:.4f} | {r['train_loss']:.4f} | {r['linear_probe_accuracy']:.3f} | "
            f"{r['knn_accuracy']:.3f} | {r['train_seconds']:.0f} |"
        )
    lines += ["", f"Untrained backbone: linear probe {baseline['linear_probe_accuracy']:.3f}, k-NN "
              f"{baseline['knn_accuracy']:.3f}. Runs below it on the probe: "
              f"{sum(r['linear_probe_accuracy'] <= baseline['linear_probe_accuracy'] for r in runs)} of {len(runs)}.",
              "", "| Spearman with the linear probe | runs | " + " | ".join(LOSSES) + " |",
              "|" + " --- |" * (2 + len(LOSSES))]
    lines.append(f"| all runs | {len(runs)} | " + " | ".join(_fmt(stats["overall"][k]) for k in LOSSES) + " |")
    for lambd, group in stats["by_lambda"].items():
        lines.append(f"| lambda = {lambd} | {group['runs']} | " + " | ".join(_fmt(group[k]) for k in LOSSES) + " |")
    lines += ["", "| C(alpha) = loss / lambda^alpha, all runs | " + " | ".join(f"{a:g}" for a in ALPHAS) + " | best |",
              "|" + " --- |" * (len(ALPHAS) + 2)]
    for key in LOSSES:
        row = stats["criterion"][key]
        lines.append(f"| {key} | " + " | ".join(_fmt(row[f"{a:g}"]) for a in ALPHAS) + f" | {best_alpha[key]} |")
    output_prefix.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=tuple(RUNS), default="photos")
    parser.add_argument("--quick", action="store_true", help="3 runs of 5 steps (a smoke test).")
    parser.add_argument("--output", default=None, help="Prefix of the outputs; docs/loss_study_DATASET by default.")
    parser.add_argument("--work_dir", default="/tmp/lejepa_loss_study", help="Scratch folder and finished runs.")
    parser.add_argument("--max_runs", type=int, default=None, help="Stop after this many runs (all by default).")
    options = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.makedirs(options.work_dir, exist_ok=True)
    splits = load_dataset(options.dataset, options.work_dir)
    image_processor = default_image_processor(build_pretraining_config(recipe=RECIPE).global_image_size)
    changes = RUNS[options.dataset][: 3 if options.quick else options.max_runs]
    cache_file = Path(options.work_dir) / f"{options.dataset}{'-quick' if options.quick else ''}.jsonl"
    cached = [json.loads(line) for line in cache_file.read_text().splitlines()] if cache_file.is_file() else []
    output_prefix = Path(options.output or f"docs/loss_study_{options.dataset}")

    torch.manual_seed(42)  # the untrained backbone of the recipe's shape, as the runs start
    untrained = LeJepaForPreTraining(build_pretraining_config(recipe=RECIPE)).lejepa
    scores = evaluate_embeddings(untrained, splits["train"], splits["test"], image_processor)
    baseline = {key: scores[key] for key in ("linear_probe_accuracy", "knn_accuracy")}

    runs = []
    for index, change in enumerate(changes):
        settings = recipe_settings(change)
        if options.quick:
            settings["max_steps"] = 5
        settings = json.loads(json.dumps(settings))  # tuples as lists, as the cache has them
        result = next((r for r in cached if all(r.get(k) == v for k, v in settings.items())), None)
        if result is None:
            result = run_one(settings, os.path.join(options.work_dir, f"{options.dataset}-{index}"), splits,
                             image_processor)
            with cache_file.open("a") as f:
                f.write(json.dumps(result) + "\n")
        runs.append(result)
        print(json.dumps(result), flush=True)
        if len(runs) >= 3:
            write_outputs(runs, correlations(runs), baseline, output_prefix, options)
    stats = correlations(runs)
    print(json.dumps(stats, indent=2))
    return {"runs": runs, "spearman": stats, "random_init": baseline}


if __name__ == "__main__":
    main()
