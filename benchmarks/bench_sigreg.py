#!/usr/bin/env python
"""
Forward + backward of the full SIGReg loss (projection on random directions, Epps-Pulley statistic, mean over
directions), side by side:

- `ours`: `modeling_lejepa.sigreg.SIGReg`, whose ECF is chunked over samples and uses the angle-addition recurrence
  (`modeling_lejepa.ecf.empirical_characteristic_function`);
- `direct`: the same loss with the direct ECF formula, which materialises `N x M x T` tensors;
- `lightly`: `lightly.loss.SIGReg` from the `lightly` package (`pip install lightly==1.6.0 --no-deps`), given the
  same directions.

Every method runs in fresh subprocesses: one reports the median wall time (and process CPU time, which a busy machine
disturbs less with `--threads 1`) over the timed repeats, another the peak resident memory of one pass above the
resident memory after the warm-up pass, inputs included (Linux `VmHWM`, reset through `/proc/self/clear_refs`;
elsewhere the `ru_maxrss` growth). The value of each method is compared with a float64 reference computed here (same
inputs and directions, ECF from complex exponentials in float64). A second table shows how our time and memory grow
with `N`. Other processes on the machine slow every method down, ours (many small operations) the most with several
threads: benchmark on an idle machine, or with `--threads 1`.

Usage:

```bash
python benchmarks/bench_sigreg.py                 # N=4096, D=512, M=1024, float32
python benchmarks/bench_sigreg.py --quick         # small sizes, seconds
python benchmarks/bench_sigreg.py --num-samples 8192 --repeats 10 --threads 1 --check
```
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from modeling_lejepa.ecf import (  # noqa: E402
    empirical_characteristic_function,
    empirical_characteristic_function_direct,
)
from modeling_lejepa.sigreg import SIGReg, epps_pulley_from_ecf, sample_directions, trapezoid_knots  # noqa: E402

METHODS = ("ours", "direct", "lightly")
STEP = 0  # seeds the directions
MIB = 2**20
# Each setting: (full run, --quick).
SETTINGS = {
    "num_samples": (4096, 1024),
    "dim": (512, 128),
    "num_slices": (1024, 256),
    "repeats": (7, 3),
    "scaling_samples": ([256, 1024, 4096, 16384], [256, 512, 1024, 2048]),
}
DEFAULTS = {name: full for name, (full, _) in SETTINGS.items()}
QUICK_DEFAULTS = {name: quick for name, (_, quick) in SETTINGS.items()}


def fixed_embeddings(num_samples: int, dim: int) -> torch.Tensor:
    """Standard normal embeddings, the same in every process: each directional statistic is then of order 1."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(num_samples, dim, generator=generator)


def sigreg_direct(num_slices: int, num_knots: int, t_max: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """SIGReg exactly as `modeling_lejepa.sigreg.SIGReg` (one process), with the direct ECF formula."""

    def loss(z: torch.Tensor) -> torch.Tensor:
        directions = sample_directions(z.shape[-1], num_slices, STEP, z.device, z.dtype)
        x = z @ directions
        t, _, _ = trapezoid_knots(num_knots, t_max, device=x.device, dtype=x.dtype)
        ecf_real, ecf_imag = empirical_characteristic_function_direct(x, t)
        return epps_pulley_from_ecf(ecf_real, ecf_imag, x.shape[-2], num_knots, t_max).mean()

    return loss


def sigreg_lightly(num_slices: int, num_knots: int, t_max: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """`lightly.loss.SIGReg`, drawing our directions instead of its own so that the values are comparable."""
    from lightly.loss import SIGReg as LightlySIGReg

    module = LightlySIGReg(knots=num_knots, t_max=t_max, num_vectors=num_slices)
    module._generate_unit_vectors = lambda device, dtype, num_features: sample_directions(
        num_features, num_slices, STEP, device, dtype
    )
    return module


def build_loss(method: str, num_slices: int, num_knots: int, t_max: float) -> Callable[[torch.Tensor], torch.Tensor]:
    if method == "ours":
        module = SIGReg(num_slices=num_slices, num_knots=num_knots, t_max=t_max)
        return lambda z: module(z, step=STEP)
    if method == "direct":
        return sigreg_direct(num_slices, num_knots, t_max)
    if method == "lightly":
        return sigreg_lightly(num_slices, num_knots, t_max)
    raise ValueError(f"unknown method {method!r}, expected one of {METHODS}")


def reference_value(num_samples: int, dim: int, num_slices: int, num_knots: int, t_max: float) -> float:
    """The loss in float64 for the float32 inputs and directions, with the ECF from complex exponentials."""
    z = fixed_embeddings(num_samples, dim)
    directions = sample_directions(dim, num_slices, STEP, z.device, z.dtype)
    x = z.double() @ directions.double()
    t = torch.linspace(0.0, t_max, num_knots, dtype=torch.float64)
    ecf = torch.zeros(num_slices, num_knots, dtype=torch.complex128)
    for start in range(0, num_samples, 256):
        ecf += torch.exp(1j * x[start : start + 256, :, None] * t).sum(dim=0)
    ecf /= num_samples
    return epps_pulley_from_ecf(ecf.real, ecf.imag, num_samples, num_knots, t_max).mean().item()


def accuracy_table(num_slices: int = 256, num_knots: int = 17, t_max: float = 3.0) -> list[str]:
    """
    Markdown rows: the float32 recurrence against float64 and against the direct float32 formula, for inputs whose
    `|t x|` reaches 15 to 51. Columns: one `exp(i t_k x)` after the recurrence (worst element); the ECF (worst absolute
    error); the statistic of each direction (worst relative error); their mean, the SIGReg value (relative error).
    """
    t = torch.linspace(0.0, t_max, num_knots)
    step = t_max / (num_knots - 1)
    generator = torch.Generator().manual_seed(0)
    cases = [
        ("N(0,1), N=4096", lambda: torch.randn(4096, num_slices, generator=generator)),
        ("N(0,1), N=16384", lambda: torch.randn(16384, num_slices, generator=generator)),
        ("N(0,3^2), N=4096", lambda: 3 * torch.randn(4096, num_slices, generator=generator)),
        ("U(-17,17), N=4096", lambda: (torch.rand(4096, num_slices, generator=generator) * 2 - 1) * 17),
        ("15 + 0.01 N(0,1), N=4096", lambda: 15 + 0.01 * torch.randn(4096, num_slices, generator=generator)),
    ]
    rows = [
        "| x | max \\|t x\\| | one exp(i t x): recurrence / direct f32 | ECF max abs error: ours / direct f32 "
        "| per-direction statistic, max rel. error: ours / direct f32 "
        "| SIGReg value (mean) rel. error: ours / direct f32 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, make in cases:
        x = make()
        num_samples = x.shape[0]
        exact = torch.exp(1j * x.double().unsqueeze(-1) * t.double())  # (N, M, T)
        ecf64 = (exact.real.mean(dim=0), exact.imag.mean(dim=0))
        # one element: the recurrence as ecf.py runs it, on the first 512 samples
        head = x[:512]
        angle = head * step
        base = torch.complex(angle.cos(), angle.sin())
        power, recurrence_error = base.clone(), 0.0
        for k in range(2, num_knots):
            power.mul_(base)
            recurrence_error = max(
                recurrence_error, (power.to(torch.complex128) - exact[:512, :, k]).abs().max().item()
            )
        xt = head.unsqueeze(-1) * t
        direct_error = (torch.complex(xt.cos(), xt.sin()).to(torch.complex128) - exact[:512]).abs().max().item()
        del exact

        def statistic(ecf: tuple[torch.Tensor, torch.Tensor], n: int = num_samples) -> torch.Tensor:
            return epps_pulley_from_ecf(ecf[0].double(), ecf[1].double(), n, num_knots, t_max)

        reference = statistic(ecf64)
        columns = {"recurrence": [], "ecf": [], "each": [], "mean": []}
        for ecf in (
            empirical_characteristic_function(x, t, uniform_step=step),
            empirical_characteristic_function_direct(x, t),
        ):
            value = statistic(ecf)
            columns["ecf"].append(max((part.double() - ref).abs().max().item() for part, ref in zip(ecf, ecf64)))
            columns["each"].append(((value - reference).abs() / reference).max().item())
            columns["mean"].append(relative_error(value.mean().item(), reference.mean().item()))
        cells = [f"{recurrence_error:.1e} / {direct_error:.1e}"]
        cells += [" / ".join(f"{v:.1e}" for v in columns[key]) for key in ("ecf", "each", "mean")]
        rows.append(f"| {name} | {t_max * x.abs().max().item():.0f} | " + " | ".join(cells) + " |")
    return rows


# ---------------------------------------------------------------------------------------------- worker (subprocess)


def _current_rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Resets Linux's peak resident set size (`VmHWM`) to the current one; `False` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _max_rss_from_rusage() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kilobytes elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_worker(args: argparse.Namespace) -> dict:
    """
    Runs `args.worker` in this process: times the repeats (`--measure time`), or measures the peak resident memory of
    one pass above the resident memory after the warm-up passes (`--measure memory`).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    loss_fn = build_loss(args.worker, args.num_slices, args.num_knots, args.t_max)
    z = fixed_embeddings(args.num_samples, args.dim).requires_grad_()

    def step() -> tuple[float, float]:
        z.grad = None
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = loss_fn(z)
        loss.backward()
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        step.value = loss.item()
        return elapsed, elapsed_cpu

    for _ in range(args.warmup):  # also initialises the libraries (BLAS buffers, autograd engine)
        step()
    if args.measure == "time":
        times, cpu_times = zip(*[step() for _ in range(args.repeats)])
        return {
            "times_s": times,
            "median_s": statistics.median(times),
            "median_cpu_s": statistics.median(cpu_times),
            "value": step.value,
        }
    z.grad = None
    gc.collect()
    use_proc = sys.platform.startswith("linux") and _reset_peak_rss()
    baseline = _current_rss() if use_proc else _max_rss_from_rusage()
    step()
    peak = _peak_rss() if use_proc else _max_rss_from_rusage()
    return {"peak_extra_bytes": max(0, peak - baseline)}


# ---------------------------------------------------------------------------------------------- driver


def measure(method: str, num_samples: int, args: argparse.Namespace) -> dict | None:
    """Runs one method in a fresh Python process; `None` when it cannot run (lightly not installed)."""
    if method == "lightly":
        try:
            importlib.metadata.version("lightly")
        except importlib.metadata.PackageNotFoundError:
            print("lightly is not installed (pip install lightly==1.6.0 --no-deps): skipped", file=sys.stderr)
            return None
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--num-samples",
        str(num_samples),
        "--dim",
        str(args.dim),
        "--num-slices",
        str(args.num_slices),
        "--num-knots",
        str(args.num_knots),
        "--t-max",
        str(args.t_max),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]
    result = {}
    for kind in ("time", "memory"):
        env = dict(os.environ)
        if kind == "memory":
            # A fixed mmap threshold makes glibc return every freed block of 64 KiB or more to the system at once: the
            # memory after the warm-up is a clean baseline, and the measured pass allocates all its buffers afresh
            # (with the default, growing threshold, buffers recycled inside the heap would go uncounted). It also
            # slows down allocations, hence a separate process for the timing.
            env["MALLOC_MMAP_THRESHOLD_"] = str(2**16)
        completed = subprocess.run([*command, "--measure", kind], capture_output=True, text=True, check=True, env=env)
        result.update(json.loads(completed.stdout.strip().splitlines()[-1]))
    return result


def relative_error(value: float, reference: float) -> float:
    return abs(value - reference) / abs(reference)


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPU cores"


def _load_average() -> str:
    """Other processes on the machine slow every method down, the many small operations of ours the most."""
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--num-samples", type=int, help="N, the batch size (default 4096; --quick: 1024)")
    parser.add_argument("--dim", type=int, help="D, the embedding dimension (default 512; --quick: 128)")
    parser.add_argument("--num-slices", type=int, help="M, the random directions (default 1024; --quick: 256)")
    parser.add_argument("--num-knots", type=int, default=17, help="T, the integration knots (default 17)")
    parser.add_argument("--t-max", type=float, default=3.0, help="end of the integration range (default 3)")
    parser.add_argument("--repeats", type=int, help="timed forward+backward passes (default 7; --quick: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (default: torch's)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to compare")
    parser.add_argument(
        "--scaling-samples",
        type=int,
        nargs="*",
        help="N values for the scaling table of ours (default 256 1024 4096 16384; --quick: 256 512 1024 2048; "
        "give none to skip it)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller defaults: a run of seconds")
    parser.add_argument(
        "--accuracy", action="store_true", help="only the accuracy table of the float32 recurrence (seconds)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 unless ours meets the goals below")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=("time", "memory"), default="time", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    for name, value in (QUICK_DEFAULTS if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0

    print(f"# SIGReg forward + backward, {datetime.date.today().isoformat()}")
    lightly_version = "not installed"
    try:
        lightly_version = importlib.metadata.version("lightly")
    except importlib.metadata.PackageNotFoundError:
        pass
    print(
        f"machine: {machine_description()}; torch {torch.__version__}, {args.threads or torch.get_num_threads()} "
        f"threads; lightly {lightly_version}; Python {platform.python_version()}"
    )
    print(f"load average at start (1, 5, 15 min): {_load_average()}")
    print(f"command: python {' '.join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])}")
    if args.accuracy:
        print(f"\n## Accuracy of the float32 recurrence (T={args.num_knots}, t_max={args.t_max}, M=256)\n")
        print("\n".join(accuracy_table(num_knots=args.num_knots, t_max=args.t_max)))
        return 0
    shape = f"N={args.num_samples}, D={args.dim}, M={args.num_slices}, T={args.num_knots}, float32"
    print(f"\n## {shape}, median of {args.repeats} (after {args.warmup} warm-up)\n")

    reference = reference_value(args.num_samples, args.dim, args.num_slices, args.num_knots, args.t_max)
    results = {method: measure(method, args.num_samples, args) for method in args.methods}
    results = {method: result for method, result in results.items() if result is not None}
    ours = results.get("ours")
    print(
        "| method | median time (ms) | time / ours | median CPU time (ms) | CPU time / ours | peak extra memory (MiB) "
        "| memory / ours | rel. error vs float64 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, result in results.items():
        ratios = [
            f"{result[key] / max(1e-12, ours[key]):.1f}x" if ours else "-"
            for key in ("median_s", "median_cpu_s", "peak_extra_bytes")
        ]
        print(
            f"| {method} | {1e3 * result['median_s']:.1f} | {ratios[0]} | {1e3 * result['median_cpu_s']:.1f} "
            f"| {ratios[1]} | {result['peak_extra_bytes'] / MIB:.1f} | {ratios[2]} "
            f"| {relative_error(result['value'], reference):.1e} |"
        )
    print(f"\nfloat64 reference value: {reference:.10f}")

    goals_met = True
    if ours:
        goals = [("value within 1e-5 of float64", relative_error(ours["value"], reference) <= 1e-5)]
        for method in ("direct", "lightly"):
            if method in results:
                speedup = results[method]["median_s"] / ours["median_s"]
                cpu_speedup = results[method]["median_cpu_s"] / ours["median_cpu_s"]
                goals.append(
                    (
                        f"at least 4x faster than {method} ({speedup:.1f}x in time, {cpu_speedup:.1f}x in CPU time)",
                        speedup >= 4,
                    )
                )
        if "direct" in results:
            fraction = ours["peak_extra_bytes"] / max(1, results["direct"]["peak_extra_bytes"])
            goals.append((f"at most 1/8 of direct's peak extra memory ({fraction:.3f})", fraction <= 1 / 8))
        print("\n" + "\n".join(f"- [{'x' if met else ' '}] {goal}" for goal, met in goals))
        goals_met = all(met for _, met in goals)

    if args.scaling_samples:
        print(f"\n## Scaling of ours with N (D={args.dim}, M={args.num_slices}, T={args.num_knots}, float32)\n")
        print(
            "| N | median time (ms) | time per sample (us) | CPU time (ms) | peak extra memory (MiB) "
            "| rel. error vs float64 |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for num_samples in args.scaling_samples:
            result = ours if ours and num_samples == args.num_samples else measure("ours", num_samples, args)
            value64 = reference_value(num_samples, args.dim, args.num_slices, args.num_knots, args.t_max)
            print(
                f"| {num_samples} | {1e3 * result['median_s']:.1f} | {1e6 * result['median_s'] / num_samples:.1f} "
                f"| {1e3 * result['median_cpu_s']:.1f} | {result['peak_extra_bytes'] / MIB:.1f} "
                f"| {relative_error(result['value'], value64):.1e} |"
            )
    print(f"\nload average at the end (1, 5, 15 min): {_load_average()}")
    return 0 if goals_met or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
