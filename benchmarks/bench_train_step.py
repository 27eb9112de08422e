#!/usr/bin/env python
"""
The cost of `LeJepaTrainer` around a LeJEPA training step, against a hand-written PyTorch loop doing the same work.

Both sides train the same small ViT (a fresh copy of the same initial weights every round) with the default
multi-crop views (2 x 224 px global + 6 x 96 px local), on the same pre-generated in-memory views, batched by the same
`MultiCropCollator` in a `DataLoader` with no workers, in the same order (`train_sampling_strategy="sequential"`):

- `trainer`: `LeJepaTrainer` (report_to none, logging every `--logging-steps` steps, no checkpoints, `use_cpu`);
- `plain`: `model(..., step=global_step)`, `loss.backward()`, `clip_grad_norm_(1.0)` (Trainer's `max_grad_norm`),
  AdamW with Trainer's own optimizer class and keyword arguments (fused AdamW by default) and parameter groups (no
  decay on biases and norms), `get_scheduler("cosine_with_min_lr")` with the same warmup, `zero_grad()`.

There is no augmentation on either side: this measures the trainer's overhead only. A short check first runs both
for a few steps and compares their losses and final weights, to show that the plain loop is the same computation.

Per-step times are the intervals between consecutive ends of optimizer steps (`on_step_end` for the trainer, the end
of the loop body for the plain loop), so they include fetching and collating the next batch, callbacks and logging;
the first `--warmup-steps` intervals of every run are dropped. Rounds alternate which side runs first. The wall-clock
median is reported with the median of process CPU time (less sensitive to other processes on a shared machine), and
the spread of the per-round ratios of mean step times, which include the logging steps.

Usage:

```bash
python benchmarks/bench_train_step.py                  # 5 rounds of 21 steps per side, batch 8, 1 thread
python benchmarks/bench_train_step.py --quick          # a tiny model, 2 rounds of 4 steps (seconds)
python benchmarks/bench_train_step.py --profile        # also cProfile one run of each, top functions by self time
python benchmarks/bench_train_step.py --quick --host-costs   # per-step host calls of Trainer, incl. for ViT-H/14
```
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import datetime
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from transformers import TrainerCallback, TrainingArguments, ViTConfig, get_scheduler  # noqa: E402
from transformers.trainer_pt_utils import get_parameter_names  # noqa: E402

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining  # noqa: E402
from trainer import LeJepaTrainer, MultiCropCollator  # noqa: E402

LEARNING_RATE = 5e-4
WEIGHT_DECAY = 0.05
MAX_GRAD_NORM = 1.0
SCHEDULER = "cosine_with_min_lr"
SCHEDULER_KWARGS = {"min_lr_rate": 1e-3}
# Functions shown by `--profile` by cumulative time: where the trainer's own cost is.
PROFILE_FILTER = (
    r"transformers/trainer|accelerate|trainer/trainer|callback|clip_grad|num_parameters|module.py.*\(train\)"
)
QUICK_DEFAULTS = {
    "batch_size": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "patch_size": 8, "global_size": 32,
    "local_size": 16, "projector_hidden_size": 64, "num_slices": 64, "paired_runs": 1, "rounds": 1, "steps": 4,
    "logging_steps": 2, "check_steps": 2, "pool_size": 8,
}


# ------------------------------------------------------------------------------------------------------ set-up
def build_config(args: argparse.Namespace) -> LeJepaConfig:
    """The benchmarked model: a small ViT at the default LeJEPA views and loss settings."""
    backbone = ViTConfig(
        hidden_size=args.hidden_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        intermediate_size=4 * args.hidden_size,
        patch_size=args.patch_size,
        image_size=args.global_size,
        qkv_bias=True,
        layer_norm_eps=1e-6,
    )
    return LeJepaConfig(
        backbone_config=backbone,
        projector_hidden_size=args.projector_hidden_size,
        sigreg_num_slices=args.num_slices,
        global_image_size=args.global_size,
        local_image_size=args.local_size,
    )


class InMemoryViews(Dataset):
    """
    `length` examples cycling over a pool of pre-generated views: each item is a dict of views of the pool's tensors
    (no copy), as `MultiCropTransform` would return them.
    """

    def __init__(self, config: LeJepaConfig, pool_size: int, length: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        g, loc = config.global_image_size, config.local_image_size
        self.global_views = torch.randn(pool_size, config.num_global_views, 3, g, g, generator=generator)
        self.local_views = torch.randn(pool_size, config.num_local_views, 3, loc, loc, generator=generator)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = index % len(self.global_views)
        return {"pixel_values": self.global_views[index], "local_pixel_values": self.local_views[index]}


@dataclass
class RunTimes:
    """Timestamps (wall and process CPU time) taken at the end of every optimizer step of one run."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def mark(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def intervals(self, skip: int) -> tuple[list[float], list[float]]:
        """Step times after the first `skip` intervals (the first step has no interval: it is warm-up anyway)."""
        wall = [b - a for a, b in zip(self.wall, self.wall[1:])][skip:]
        cpu = [b - a for a, b in zip(self.cpu, self.cpu[1:])][skip:]
        return wall, cpu


class StepTimer(TrainerCallback):
    """Marks the end of every optimizer step of the trainer."""

    def __init__(self, times: RunTimes):
        self.times = times

    def on_step_end(self, args, state, control, **kwargs):
        self.times.mark()


def record_losses(model: torch.nn.Module, times: RunTimes) -> torch.utils.hooks.RemovableHandle:
    """A forward hook recording every loss (a host sync: only for the equivalence check, never while timing)."""

    def hook(module, inputs, outputs):
        times.losses.append(outputs.loss.item())

    return model.register_forward_hook(hook)


def training_arguments(args: argparse.Namespace, output_dir: str, max_steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=max_steps,
        learning_rate=LEARNING_RATE,
        weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type=SCHEDULER,
        lr_scheduler_kwargs=dict(SCHEDULER_KWARGS),
        warmup_steps=args.lr_warmup_steps,
        logging_steps=args.logging_steps,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        use_cpu=True,
        disable_tqdm=not args.tqdm,
        seed=args.seed,
    )


def run_trainer(
    args: argparse.Namespace, model: LeJepaForPreTraining, dataset: Dataset, max_steps: int, with_losses: bool = False
) -> tuple[RunTimes, float]:
    """One `LeJepaTrainer.train()` of `max_steps` steps; returns the step marks and the total wall time of train()."""
    times = RunTimes()
    handle = record_losses(model, times) if with_losses else None
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = LeJepaTrainer(
            model=model,
            args=training_arguments(args, output_dir, max_steps),
            train_dataset=dataset,
            data_collator=MultiCropCollator(return_labels=False),
            callbacks=[StepTimer(times)],
        )
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its log dicts when tqdm is off
            trainer.train()
        total = time.perf_counter() - start
    if handle is not None:
        handle.remove()
    return times, total


def plain_optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW with the class, keyword arguments and parameter groups that Trainer would use."""
    optimizer_cls, optimizer_kwargs = args.optimizer_spec
    # Trainer's rule: no decay for LayerNorm parameters and names matching these patterns (BatchNorm is decayed).
    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay_names = set(get_parameter_names(model, [torch.nn.LayerNorm], patterns))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay_names], "weight_decay": WEIGHT_DECAY},
        {"params": [p for n, p in named if n not in decay_names], "weight_decay": 0.0},
    ]
    return optimizer_cls(groups, **optimizer_kwargs)


def plain_steps(
    args: argparse.Namespace, model: LeJepaForPreTraining, dataset: Dataset, max_steps: int
) -> Iterator[int]:
    """
    The hand-written loop, one optimizer step per `next()`: the same model, loss, optimizer, schedule, clipping and
    batches as `run_trainer`. Yields the global step just completed.
    """
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0,
                        collate_fn=MultiCropCollator(return_labels=False))
    optimizer = plain_optimizer(args, model)
    scheduler = get_scheduler(
        SCHEDULER, optimizer, num_warmup_steps=args.lr_warmup_steps, num_training_steps=max_steps,
        scheduler_specific_kwargs=dict(SCHEDULER_KWARGS),
    )
    model.train()
    for step, batch in enumerate(loader):
        if step == max_steps:
            break
        outputs = model(pixel_values=batch["pixel_values"], local_pixel_values=batch["local_pixel_values"], step=step)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        yield step + 1


def run_plain(
    args: argparse.Namespace, model: LeJepaForPreTraining, dataset: Dataset, max_steps: int, with_losses: bool = False
) -> tuple[RunTimes, float]:
    """`plain_steps` run to the end; returns the step marks and the total wall time."""
    times = RunTimes()
    handle = record_losses(model, times) if with_losses else None
    start = time.perf_counter()
    for _ in plain_steps(args, model, dataset, max_steps):
        times.mark()
    total = time.perf_counter() - start
    if handle is not None:
        handle.remove()
    return times, total


class PairedPlainSteps(TrainerCallback):
    """
    Runs one step of the plain loop right after every trainer step, so that each trainer step and the plain step
    next to it see the same load on a shared machine. The trainer's step time is the interval from the end of the
    previous plain step to the end of this trainer step.
    """

    def __init__(self, steps: Iterator[int]):
        self.steps = steps
        self.trainer_wall: list[float] = []
        self.trainer_cpu: list[float] = []
        self.plain_wall: list[float] = []
        self.plain_cpu: list[float] = []
        self._last: tuple[float, float] | None = None

    def on_step_end(self, args, state, control, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        if self._last is not None:
            self.trainer_wall.append(wall - self._last[0])
            self.trainer_cpu.append(cpu - self._last[1])
        next(self.steps)
        end_wall, end_cpu = time.perf_counter(), time.process_time()
        self.plain_wall.append(end_wall - wall)
        self.plain_cpu.append(end_cpu - cpu)
        self._last = (end_wall, end_cpu)


def measure_paired(args: argparse.Namespace, initial: LeJepaForPreTraining, dataset: Dataset) -> dict[str, list]:
    """`--paired-runs` trainer runs, each with a plain loop stepping in lockstep; per-step times and pair ratios."""
    results = {"trainer_wall": [], "trainer_cpu": [], "plain_wall": [], "plain_cpu": [], "ratios": [],
               "cpu_ratios": []}
    for run_index in range(args.paired_runs):
        plain_model = copy.deepcopy(initial)
        pairing = PairedPlainSteps(plain_steps(args, plain_model, dataset, args.steps))
        with tempfile.TemporaryDirectory() as output_dir:
            trainer = LeJepaTrainer(
                model=copy.deepcopy(initial),
                args=training_arguments(args, output_dir, args.steps),
                train_dataset=dataset,
                data_collator=MultiCropCollator(return_labels=False),
                callbacks=[pairing],
            )
            with contextlib.redirect_stdout(io.StringIO()):
                trainer.train()
        skip = args.warmup_steps
        # trainer interval i (step i + 1) sits between plain steps i and i + 1: pair it with plain step i + 1
        trainer_wall, trainer_cpu = pairing.trainer_wall[skip:], pairing.trainer_cpu[skip:]
        plain_wall, plain_cpu = pairing.plain_wall[skip + 1:], pairing.plain_cpu[skip + 1:]
        results["trainer_wall"] += trainer_wall
        results["trainer_cpu"] += trainer_cpu
        results["plain_wall"] += plain_wall
        results["plain_cpu"] += plain_cpu
        results["ratios"] += [t / p for t, p in zip(trainer_wall, plain_wall)]
        results["cpu_ratios"] += [t / p for t, p in zip(trainer_cpu, plain_cpu)]
        print(f"  paired run {run_index + 1}/{args.paired_runs}: trainer median {statistics.median(trainer_wall):.3f}"
              f" s/step, plain median {statistics.median(plain_wall):.3f} s/step, median pair ratio "
              f"{statistics.median(results['ratios'][-len(trainer_wall):]):.3f}", flush=True)
    return results


RUNNERS = {"trainer": run_trainer, "plain": run_plain}


# --------------------------------------------------------------------------------------------------- measurement
def check_equivalence(args: argparse.Namespace, initial: LeJepaForPreTraining, dataset: Dataset) -> dict[str, float]:
    """Runs both sides for a few steps and compares their per-step losses and final weights."""
    steps = args.check_steps
    models, losses = {}, {}
    for name, runner in RUNNERS.items():
        models[name] = copy.deepcopy(initial)
        times, _ = runner(args, models[name], dataset, steps, with_losses=True)
        losses[name] = times.losses
    if len(losses["trainer"]) != steps or len(losses["plain"]) != steps:
        counts = {name: len(values) for name, values in losses.items()}
        raise RuntimeError(f"Expected {steps} losses per side, got {counts}.")
    loss_diff = max(abs(a - b) for a, b in zip(losses["trainer"], losses["plain"]))
    params = zip(models["trainer"].parameters(), models["plain"].parameters())
    weight_diff = max((a.detach() - b.detach()).abs().max().item() for a, b in params)
    moved = max((a.detach() - b.detach()).abs().max().item()
                for a, b in zip(models["plain"].parameters(), initial.parameters()))
    return {"steps": steps, "loss_diff": loss_diff, "weight_diff": weight_diff, "weight_change": moved,
            "first_loss": losses["plain"][0], "last_loss": losses["plain"][-1]}


def measure(args: argparse.Namespace, initial: LeJepaForPreTraining, dataset: Dataset) -> dict[str, dict]:
    """`--rounds` rounds of one run per side, alternating which goes first."""
    results = {name: {"wall": [], "cpu": [], "round_means": [], "train_calls": []} for name in RUNNERS}
    for round_index in range(args.rounds):
        order = list(RUNNERS) if round_index % 2 == 0 else list(reversed(RUNNERS))
        for name in order:
            times, total = RUNNERS[name](args, copy.deepcopy(initial), dataset, args.steps)
            wall, cpu = times.intervals(args.warmup_steps)
            results[name]["wall"].extend(wall)
            results[name]["cpu"].extend(cpu)
            results[name]["round_means"].append(statistics.fmean(wall))
            results[name]["train_calls"].append(total)
            print(f"  round {round_index + 1}/{args.rounds} {name:>7}: median {statistics.median(wall):.3f} s/step, "
                  f"mean {statistics.fmean(wall):.3f} s/step, whole run {total:.2f} s", flush=True)
    return results


def profile(args: argparse.Namespace, initial: LeJepaForPreTraining, dataset: Dataset) -> None:
    """
    cProfile one run per side: the functions with the most self time, then the Trainer, Accelerate, gradient clipping,
    `num_parameters` and `Module.train` functions by cumulative time (where the trainer's own cost shows).
    """
    for name, runner in RUNNERS.items():
        profiler = cProfile.Profile()
        model = copy.deepcopy(initial)
        profiler.enable()
        runner(args, model, dataset, args.steps)
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("tottime").print_stats(args.profile_top)
        print(f"\n### cProfile, {name}, {args.steps} steps, top {args.profile_top} by self time\n")
        print("```")
        print("\n".join(line for line in stream.getvalue().splitlines() if line.strip())[:6000])
        print("```")
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("cumulative").print_stats(PROFILE_FILTER, 30)
        print(f"\n### cProfile, {name}: Trainer, Accelerate, clipping, `train()` by cumulative time\n")
        print("```")
        print("\n".join(line for line in stream.getvalue().splitlines() if line.strip())[:6000])
        print("```")


def host_costs(config: LeJepaConfig, repeats: int = 50) -> None:
    """
    Times, with `timeit`, the host-side calls that Trainer and Accelerate make on every step, for the benchmarked
    model and for ViT-H/14 (built on the `meta` device: no memory, same module tree).
    """
    import timeit

    from accelerate.utils import is_lomo_available

    print("\n### Host-side calls made on every step\n")
    print("| call | benchmarked model (ms) | ViT-H/14 (ms) |")
    print("|---|---:|---:|")
    models = {}
    for name, model_config in (("bench", config), ("huge", LeJepaConfig.from_preset("vit-huge-patch14"))):
        with torch.device("meta"):
            models[name] = LeJepaForPreTraining(model_config)
    calls = {
        "`model.num_parameters(exclude_embeddings=True)` (Trainer.floating_point_ops)":
            lambda m: m.num_parameters(exclude_embeddings=True),
        "`model.train()` (Trainer.training_step)": lambda m: m.train(),
    }
    for label, call in calls.items():
        row = [1e3 * timeit.timeit(lambda m=models[n], f=call: f(m), number=repeats) / repeats
               for n in ("bench", "huge")]
        print(f"| {label} | {row[0]:.3f} | {row[1]:.3f} |")
    lomo = 1e3 * timeit.timeit(is_lomo_available, number=20 * repeats) / (20 * repeats)
    print(f"| `accelerate.utils.is_lomo_available()`, twice per AcceleratedOptimizer.step | {lomo:.3f} | {lomo:.3f} |")


def spread(values: list[float]) -> str:
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
    return q1, q2, q3


def report(
    args: argparse.Namespace, config: LeJepaConfig, num_parameters: int, check: dict, paired: dict | None,
    rounds: dict | None,
) -> dict[str, float]:
    """Prints the markdown report; returns the headline ratios."""
    images = args.batch_size
    c = config
    summary = {}
    print(f"\n## Training step: LeJepaTrainer vs a plain PyTorch loop ({datetime.date.today().isoformat()})\n")
    print(f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} thread(s)), transformers {transformers.__version__}, Python "
          f"{platform.python_version()}")
    print(f"- model: ViT hidden {c.backbone_config.hidden_size}, {c.backbone_config.num_hidden_layers} layers, "
          f"{c.backbone_config.num_attention_heads} heads, patch {c.backbone_config.patch_size}; projector "
          f"{c.projector_hidden_size}-{c.projector_output_size}; {c.sigreg_num_slices} slices; "
          f"{num_parameters / 1e6:.2f}M parameters")
    print(f"- views: {c.num_global_views} x {c.global_image_size} px + {c.num_local_views} x {c.local_image_size} px, "
          f"batch {images}; {args.steps} steps per run, first {args.warmup_steps} interval(s) of each run dropped, "
          f"logging every {args.logging_steps} steps, tqdm {'on' if args.tqdm else 'off'}")
    print(f"- equivalence ({check['steps']} steps): max |loss difference| {check['loss_diff']:.2e}, max |weight "
          f"difference| {check['weight_diff']:.2e} (weights moved by up to {check['weight_change']:.2e}); loss "
          f"{check['first_loss']:.4f} -> {check['last_loss']:.4f}")
    if paired:
        ratio_q = quartiles(paired["ratios"])
        cpu_q = quartiles(paired["cpu_ratios"])
        summary.update(paired_wall_ratio=ratio_q[1], paired_cpu_ratio=cpu_q[1])
        print(f"\nLockstep: {args.paired_runs} trainer runs, each followed step by step by the plain loop "
              f"({len(paired['ratios'])} pairs).\n")
        print("| | trainer | plain loop | trainer / plain: median of pair ratios (IQR) |")
        print("|---|---:|---:|---:|")
        print(f"| wall time per step, median (s) | {statistics.median(paired['trainer_wall']):.4f} | "
              f"{statistics.median(paired['plain_wall']):.4f} | "
              f"{ratio_q[1]:.3f} ({ratio_q[0]:.3f}-{ratio_q[2]:.3f}) |")
        print(f"| CPU time per step, median (s) | {statistics.median(paired['trainer_cpu']):.4f} | "
              f"{statistics.median(paired['plain_cpu']):.4f} | {cpu_q[1]:.3f} ({cpu_q[0]:.3f}-{cpu_q[2]:.3f}) |")
        print(f"| wall time per step, mean (s) | {statistics.fmean(paired['trainer_wall']):.4f} | "
              f"{statistics.fmean(paired['plain_wall']):.4f} | "
              f"{statistics.fmean(paired['trainer_wall']) / statistics.fmean(paired['plain_wall']):.3f} |")
        print(f"| images per second (median step) | {images / statistics.median(paired['trainer_wall']):.1f} | "
              f"{images / statistics.median(paired['plain_wall']):.1f} | |")
    if rounds:
        trainer, plain = rounds["trainer"], rounds["plain"]
        round_ratios = [t / p for t, p in zip(trainer["round_means"], plain["round_means"])]
        wall_ratio = statistics.median(trainer["wall"]) / statistics.median(plain["wall"])
        cpu_ratio = statistics.median(trainer["cpu"]) / statistics.median(plain["cpu"])
        summary.update(rounds_wall_ratio=wall_ratio, rounds_cpu_ratio=cpu_ratio)
        print(f"\nSeparate runs: {args.rounds} rounds of one run per side, alternating which goes first.\n")
        print("| | trainer | plain loop | trainer / plain |")
        print("|---|---:|---:|---:|")
        print(f"| wall time per step, median (s) | {statistics.median(trainer['wall']):.4f} | "
              f"{statistics.median(plain['wall']):.4f} | {wall_ratio:.3f} |")
        print(f"| CPU time per step, median (s) | {statistics.median(trainer['cpu']):.4f} | "
              f"{statistics.median(plain['cpu']):.4f} | {cpu_ratio:.3f} |")
        print(f"| mean wall time per step of each round: min / median / max (s) | {spread(trainer['round_means'])} | "
              f"{spread(plain['round_means'])} | {spread(round_ratios)} |")
        print(f"| whole run incl. set-up, median (s) | {statistics.median(trainer['train_calls']):.2f} | "
              f"{statistics.median(plain['train_calls']):.2f} | |")
    headline = summary.get("paired_wall_ratio", summary.get("rounds_wall_ratio"))
    if headline is not None:
        verdict = "within" if headline <= 1.05 else "ABOVE"
        print(f"\nHeadline ratio trainer/plain (wall time, median): {headline:.3f}, {verdict} the 1.05 goal.")
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=192)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=3)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--projector-hidden-size", type=int, default=2048)
    parser.add_argument("--num-slices", type=int, default=1024)
    parser.add_argument("--paired-runs", type=int, default=2,
                        help="Trainer runs with the plain loop stepping in lockstep (0: none).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of separate runs, one per side (0: none).")
    parser.add_argument("--steps", type=int, default=21, help="Optimizer steps per run.")
    parser.add_argument("--warmup-steps", type=int, default=1, help="Step intervals dropped at the start of a run.")
    parser.add_argument("--lr-warmup-steps", type=int, default=2, help="Linear learning-rate warmup steps.")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--check-steps", type=int, default=3, help="Steps of the equivalence check (0: skip).")
    parser.add_argument("--pool-size", type=int, default=16, help="Distinct pre-generated images.")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch.set_num_threads; 0 keeps torch's default. One thread by default: on a shared 2-core machine, two "
        "OpenMP threads competing with other processes made steps several times slower and far noisier.",
    )
    parser.add_argument("--tqdm", action="store_true", help="Keep Trainer's progress bar on.")
    parser.add_argument("--profile", action="store_true", help="Also cProfile one run of each side.")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--host-costs", action="store_true",
                        help="Also time the host-side calls Trainer makes every step (also for ViT-H/14).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke test that runs in seconds.")
    if parser.parse_known_args(argv)[0].quick:  # tiny defaults; explicit flags still win
        parser.set_defaults(**QUICK_DEFAULTS)
    args = parser.parse_args(argv)
    # Trainer's optimizer class and keyword arguments for these settings. Resolved once, here: building
    # `TrainingArguments` resets Accelerate's state, which must not happen while a Trainer is training.
    args.optimizer_spec = transformers.Trainer.get_optimizer_cls_and_kwargs(
        training_arguments(args, tempfile.gettempdir(), 1)
    )
    if args.steps < args.warmup_steps + 2:
        parser.error("--steps must exceed --warmup-steps by at least 2.")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(args.seed)
    config = build_config(args)
    initial = LeJepaForPreTraining(config)
    num_parameters = initial.num_parameters()
    dataset = InMemoryViews(config, args.pool_size, args.batch_size * max(args.steps, args.check_steps), args.seed)

    check = {"steps": 0, "loss_diff": float("nan"), "weight_diff": float("nan"), "weight_change": float("nan"),
             "first_loss": float("nan"), "last_loss": float("nan")}
    if args.check_steps:
        check = check_equivalence(args, initial, dataset)
        print(f"equivalence check: max |loss diff| {check['loss_diff']:.2e}, max |weight diff| "
              f"{check['weight_diff']:.2e}", flush=True)
    paired = measure_paired(args, initial, dataset) if args.paired_runs else None
    rounds = measure(args, initial, dataset) if args.rounds else None
    summary = report(args, config, num_parameters, check, paired, rounds)
    if args.profile:
        profile(args, initial, dataset)
    if args.host_costs:
        host_costs(config)
    return {"check": check, "paired": paired, "rounds": rounds, "summary": summary}


if __name__ == "__main__":
    main()
