"""
Multi-process streaming, for real: `accelerate launch --multi_gpu --num_processes 2 run_pretraining.py --use_cpu`
(gloo) on parquet shards of different sizes, as users stream Hub datasets whose last shard is smaller.

- Uneven shards train to `max_steps` and the checkpoint resumes: each process repeats its own shards
  (`LeJepaTrainer` reads a stream in passes), so both make every step's collective calls. Before, the process with
  less data left its epoch and waited in a callback's collective while the other waited in SIGReg's all-reduce: the
  launch hung until killed.
- A process whose shards hold no usable image stops the run with `NoTrainingDataError` on both processes.
- A process killed with SIGKILL ends the launch: torchrun's elastic agent (what `accelerate launch --multi_gpu`
  runs) sees the dead worker within `--monitor_interval` (0.1 s), sends SIGTERM to the others, SIGKILL after 30 s,
  and prints the root cause.

Every launch has a timeout, so a hang fails the test instead of blocking the suite.
"""

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from trainer.callbacks import read_stream_states

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
]
TIMEOUT = 300  # seconds for one launch; a run that hangs fails here (each takes about 30-60 s on 2 CPU cores)


def write_shards(folder: Path, sizes: list[int], bad: dict[int, int] | None = None) -> list[str]:
    """Parquet shards holding `sizes[i]` 40 x 40 PNGs (random pixels) in an `image` column, plus `bad[i]` rows of
    bytes that are no image."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image()})
    paths = []
    for index, size in enumerate(sizes):
        images = []
        for _ in range(size):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        images += [{"bytes": b"not an image", "path": None}] * (bad or {}).get(index, 0)
        path = folder / f"shard{index}.parquet"
        datasets.Dataset.from_dict({"image": images}, features=features).to_parquet(str(path))
        paths.append(str(path))
    return paths


def command(shards: list[str], output_dir: Path, max_steps: int, *extra: str) -> list[str]:
    return [
        *LAUNCH, str(REPO_ROOT / "run_pretraining.py"), "--use_cpu", "--data_files", *shards, "--streaming",
        "--max_steps", str(max_steps), "--per_device_train_batch_size", "4", "--model_preset", "vit-tiny-test",
        "--output_dir", str(output_dir), "--save_steps", "3", "--logging_steps", "1", "--builtin_evaluation", "false",
        "--report_to", "none", "--disable_tqdm", "true", "--dataloader_num_workers", "0", "--online_probe", "false",
        "--seed", "0", *extra,
    ]


# `datasets` sleeps 5 s after each pass over streamed parquet files (`SLEEP_TIME_ON_THREADS_SHUTDOWN`, a workaround
# for apache/arrow#45214), and the tiny shards here end a pass at almost every step: the launched processes set it
# to 0 at start-up, as the in-process tests do with monkeypatch.
SITECUSTOMIZE = "import datasets.config\n\ndatasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0\n"


def environment(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": f"{site}:{REPO_ROOT}",
        "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONUNBUFFERED": "1",
    }


def start(tmp_path: Path, arguments: list[str]) -> subprocess.Popen:
    """The launch in its own process group (so that a hung one is killed with all its processes)."""
    return subprocess.Popen(
        arguments, cwd=tmp_path, env=environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def launch(tmp_path: Path, arguments: list[str]) -> tuple[int, str]:
    """Runs the launch to its end: exit code and output. A launch still running after `TIMEOUT` s fails the test."""
    process = start(tmp_path, arguments)
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(process)
        output, _ = process.communicate()
        pytest.fail(f"the launch hung (killed after {TIMEOUT} s):\n{output[-4000:]}")
    return process.returncode, output


def logged_steps(output_dir: Path) -> list[int]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry["step"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sizes", [[2, 40, 5], [40, 1]], ids=["issue-layout-2-40-5", "one-process-gets-a-1-image-shard"]
)
def test_uneven_shards_train_to_max_steps_and_the_checkpoint_resumes(tmp_path, sizes):
    shards = write_shards(tmp_path, sizes)
    code, output = launch(tmp_path, command(shards, tmp_path / "run", 6))
    assert code == 0, output[-4000:]
    assert "Launch in effect: DDP, 2 processes on 1 node, backend gloo" in output
    assert logged_steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]
    states = read_stream_states(tmp_path / "run" / "checkpoint-3")
    assert states is not None and len(states) == 2  # the stream position of each process

    # The same run resumed from its step-3 checkpoint, in another folder: both processes restore their position.
    resume = ["--resume_from_checkpoint", str(tmp_path / "run" / "checkpoint-3")]
    code, output = launch(tmp_path, command(shards, tmp_path / "resumed", 6, *resume))
    assert code == 0, output[-4000:]
    assert output.count("Resuming the stream from the position saved at step 3") == 2, output[-4000:]
    assert logged_steps(tmp_path / "resumed") == [1, 2, 3, 4, 5, 6]  # steps 1-3 from the checkpoint's state
    assert output.count("{'loss': ") == 3  # steps 4-6 trained (and logged, by the main process)
    assert (tmp_path / "resumed" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("bad", [3, 0], ids=["all-images-bad", "empty-shard"])
def test_a_process_without_data_stops_the_run_on_every_process(tmp_path, bad):
    """Shards of 40 images and of `bad` undecodable rows (none: an empty parquet file)."""
    shards = write_shards(tmp_path, [40, 0], bad={1: bad})
    code, output = launch(tmp_path, command(shards, tmp_path / "run", 6))
    assert code != 0
    for rank in (0, 1):  # the same error, raised by each process
        assert f"[rank{rank}]: trainer.trainer.NoTrainingDataError: No training data on 1 of 2 process(es)" in output
    cause = r"process [01] of 2: no usable image in its 1 shard\(s\) of the stream's 2"  # the shard order is shuffled
    assert re.search(cause, output), output[-4000:]
    assert "Give the stream at least 2 shards that hold usable images" in output
    assert not (tmp_path / "run" / "checkpoint-3").exists()


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """The training processes under the launcher, by their `LOCAL_RANK`."""
    pids = {}
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    for pid in map(int, children):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"LOCAL_RANK="):
                pids[int(entry.split(b"=")[1])] = pid
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_process_ends_the_launch_within_a_bounded_time(tmp_path):
    shards = write_shards(tmp_path, [2, 40, 5])
    process = start(tmp_path, command(shards, tmp_path / "run", 10_000))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while sum("'loss'" in line for line in list(lines)) < 2:  # training is under way (2 steps logged)
            assert process.poll() is None, "".join(lines)[-4000:]
            assert time.monotonic() < deadline, "".join(lines)[-4000:]
            time.sleep(0.2)
        victim = worker_pids(process.pid)[1]
        os.kill(victim, signal.SIGKILL)  # as the kernel's out-of-memory killer does
        killed = time.monotonic()
        code = process.wait(timeout=120)
        seconds = time.monotonic() - killed
    finally:
        kill_group(process)  # the launcher and its workers, if any is left
        reader.join(timeout=10)
    output = "".join(lines)
    print(f"the launch ended {seconds:.1f} s after the worker was killed")
    assert code != 0
    assert seconds < 40, output[-4000:]  # torchrun's bound: 0.1 s to notice, 30 s of SIGTERM grace, then SIGKILL
    assert f"Signal 9 (SIGKILL) received by PID {victim}" in output  # torchrun's root-cause summary
    assert "[rank0]:" in output and "Connection closed by peer" in output  # the survivor's error
