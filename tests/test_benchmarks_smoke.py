"""Smoke tests: the benchmark scripts of `benchmarks/` run end to end in their `--quick` mode (tiny sizes, seconds)."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_train_step_quick(capsys):
    bench = load("bench_train_step")
    result = bench.main(["--quick", "--rounds", "0"])
    # The plain loop is the same computation as the trainer: identical losses and weights.
    assert result["check"]["loss_diff"] == 0.0
    assert result["check"]["weight_diff"] == 0.0
    assert result["summary"]["paired_wall_ratio"] > 0
    assert "| wall time per step, median (s) |" in capsys.readouterr().out


def test_bench_data_quick(capsys, tmp_path):
    bench = load("bench_data")
    result = bench.main(["--quick", "--data-dir", str(tmp_path)])
    assert set(result["rates"]) == {0, 1} and all(result["rates"][w] for w in (0, 1))
    copies = result["copies"]
    assert copies["datasets_no_copy"] and not copies["output_aliases_input"]
    # one copy of every view: the allocation is the batch itself (plus the 8-byte `num_skipped` tensor)
    assert copies["allocated_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert "| DataLoader workers |" in capsys.readouterr().out


def test_bench_gpu_quick_analytic_flops_match_the_counter(capsys, tmp_path):
    bench = load("bench_gpu")
    output = tmp_path / "gpu.json"
    results = bench.main(["--quick", "--attn", "eager", "--device", "cpu", "--output", str(output)])
    (result,) = results
    assert result["forward_gflops_per_image_analytic"] == pytest.approx(result["forward_gflops_per_image_counted"])
    assert result["images_per_s"] > 0 and output.exists() and output.with_suffix(".md").exists()
    assert "MFU = 3 * F_fwd * B / t_step / peak" in capsys.readouterr().out


@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_gpu_sh_dry_run(tmp_path):
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--quick", "--device", "cpu", "--no-count-flops", "--modes", "loop"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "gpu_bench_quick.json").exists() and (tmp_path / "gpu_bench.log").exists()
    assert "done (status 0)" in result.stdout



@pytest.mark.slow
def test_loss_study_quick(tmp_path):
    from scipy.stats import spearmanr

    study = load("loss_study")
    result = study.main(["--quick", "--output", str(tmp_path / "study"), "--work_dir", str(tmp_path / "runs")])
    runs = result["runs"]
    assert len(runs) == 3 and all(0.0 <= r["linear_probe_accuracy"] <= 1.0 for r in runs)
    assert [r["lambda_sigreg"] for r in runs] == [0.01, 0.02, 0.05]
    assert all(r["eval_loss_batch_stats"] > 0 and r["eval_loss"] > 0 for r in runs)
    assert 0.0 <= result["random_init"]["linear_probe_accuracy"] <= 1.0
    # C(alpha) = spearman(loss / lambda**alpha, accuracy), against scipy on the formula; alpha 0 is the loss itself
    accuracy = [r["linear_probe_accuracy"] for r in runs]
    criterion = result["spearman"]["criterion"]["eval_loss"]
    expected = spearmanr([r["eval_loss"] / r["lambda_sigreg"] ** 0.4 for r in runs], accuracy).statistic
    assert criterion["0.4"] == pytest.approx(expected) or (criterion["0.4"] is None and np.isnan(expected))
    assert criterion["0"] == result["spearman"]["overall"]["eval_loss"]
    for suffix in (".json", ".md", ".png"):
        assert (tmp_path / f"study{suffix}").is_file()
    # a second call reuses the finished runs (WORK_DIR/photos-quick.jsonl) instead of training again
    again = study.main(["--quick", "--output", str(tmp_path / "again"), "--work_dir", str(tmp_path / "runs")])
    assert again["runs"] == runs


def test_bench_device_views_quick(capsys):
    bench = load("bench_device_views")
    result = bench.main(["--quick", "--sections", "decode", "loader", "augment"])
    assert len(result["decode"]) == 5 and all(ms > 0 for ms in result["decode"].values())
    assert result["loader"]["cpu_ratio"] > 1  # views made in the worker cost more CPU than decoding alone
    ratio = result["loader"]["decode_on_device_cpu_ratio"]  # NaN when the worker used less than /proc's 10 ms tick
    assert math.isnan(ratio) or ratio > result["loader"]["cpu_ratio"]  # reading the bytes costs less than decoding
    assert result["augment"]["cpu_ms_1"] > 0
    assert "CPU per image, CPU path / device path" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="bash script")
def test_gpu_sh_end_to_end_dry_run(tmp_path):
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--quick", "--end-to-end", "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "done (status 0)" in result.stdout
    for mode in ("end-to-end", "end-to-end-decode"):  # the JPEGs decoded by the workers, then on the device
        assert f": {mode} " in result.stdout and "of the synthetic-input loop" in result.stdout, mode
    assert (tmp_path / "gpu_bench_end-to-end-quick.json").exists()


def test_bench_multichannel_quick(capsys):
    bench = load("bench_multichannel")
    results = bench.main(["--quick"])
    tiles = results["tiff13, device path (DecodeResizeTransform)"]
    assert tiles["bytes_per_image"] == 13 * 64 * 64 * 4  # float32 values of 13 bands
    assert results["jpeg, device path (DecodeResizeTransform)"]["bytes_per_image"] == 3 * 64 * 64  # uint8 RGB
    assert all(row["cpu_ms_per_image"] > 0 for row in results.values())
    assert "| images, path | worker CPU ms per image |" in capsys.readouterr().out
