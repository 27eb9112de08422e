"""Launches as users make them, in real `accelerate launch` subprocesses on CPU processes (gloo): the errors for
misconfigured ones, what a correct one reports, DDP without unused-parameter search, FSDP for two backbone families
(sharded checkpoints, resume, the final folder), and a two-node launch on loopback."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from conftest import REPO_ROOT
from transformers import ConvNextConfig, Dinov2Config, ResNetConfig, TimmWrapperConfig

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining

WORKER = str(REPO_ROOT / "tests" / "launch_worker.py")
FSDP_YAML = str(REPO_ROOT / "accelerate_configs" / "fsdp.yaml")
UNUSED_WARNING = "find_unused_parameters=True was specified"
TINY = {"projector_hidden_size": 32, "projector_output_size": 16, "sigreg_num_slices": 16}


def accelerate_launch(launch_args: list[str], script: list[str], cwd, wait: bool = True):
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_pretraining_args(output_dir) -> list[str]:
    return [
        str(REPO_ROOT / "run_pretraining.py"), "--output_dir", str(output_dir), "--max_steps", "3",
        "--per_device_train_batch_size", "8", "--dataloader_num_workers", "0", "--builtin_dataset", "digits",
        "--builtin_evaluation", "false", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
    ]


DDP_CPU = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", "0"]
FSDP_CPU = ["--config_file", FSDP_YAML, "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "0"]


def read_ranks(output_dir, world: int = 2) -> list[dict]:
    return [json.loads((output_dir / f"rank{r}.json").read_text()) for r in range(world)]


# --------------------------------------------------------------------------------------------- FSDP's units
@pytest.mark.parametrize(
    "backbone_config, block, count",
    [
        ("vit", "ViTLayer", 2),
        (Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, patch_size=8,
                      image_size=32), "Dinov2Layer", 3),
        (ConvNextConfig(hidden_sizes=[8, 16], depths=[2, 1], num_stages=2), "ConvNextLayer", 3),
        (ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8, layer_type="basic"),
         "ResNetConvLayer", 5),  # the stem and two per basic block
        (TimmWrapperConfig(architecture="resnet10t", do_pooling=True), "BasicBlock", 4),
    ],
    ids=["vit", "dinov2", "convnext", "resnet", "timm"],
)
def test_fsdp_yaml_wraps_the_blocks_of_every_backbone(backbone_config, block, count):
    """accelerate_configs/fsdp.yaml names no layer class, so accelerate's TRANSFORMER_BASED_WRAP falls back to the
    model's `_no_split_modules`: each backbone block becomes its own FSDP unit (counted by hand here)."""
    fsdp_config = yaml.safe_load(open(FSDP_YAML))["fsdp_config"]
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp_config
    if backbone_config == "vit":
        config = LeJepaConfig.from_preset("vit-tiny-test")
    else:
        config = LeJepaConfig(backbone_config=backbone_config, global_image_size=32, local_image_size=32, **TINY)
    model = LeJepaForPreTraining(config)
    assert block in model._no_split_modules
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp_config["fsdp_version"], auto_wrap_policy=fsdp_config["fsdp_auto_wrap_policy"]
    )
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [type(module).__name__ for module in model.modules() if policy(module)]
    assert wrapped.count(block) == count
    assert sum(type(module).__name__ == block for module in model.modules()) == count  # all of them


# ------------------------------------------------------------------------------------------ one process
def test_single_process_summary_and_errors_for_what_it_does_not_give(tmp_path):
    from datasets import Dataset
    from distributed_worker import collate, fixed_views

    from trainer import LeJepaTrainer, LeJepaTrainingArguments
    from trainer.launch import LaunchConfigurationError, LaunchRequest, check_launch

    args = LeJepaTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, max_steps=1, report_to="none",
        save_strategy="no", dataloader_num_workers=0,
    )
    assert args.ddp_find_unused_parameters is False
    dataset = Dataset.from_dict({"index": list(range(4))}).with_transform(lambda batch: {"index": batch["index"]})
    config = LeJepaConfig.from_preset("vit-tiny-test", num_local_views=2, **TINY)
    trainer = LeJepaTrainer(
        model=LeJepaForPreTraining(config), args=args, train_dataset=dataset, augment_on_device=False,
        data_collator=lambda examples: {k: v for k, v in collate([fixed_views(e["index"]) for e in examples]).items()
                                        if k != "index"},
    )
    trainer.train()
    assert trainer.launch_summary == (
        "single process, 1 process on 1 node, backend none, fp32, attention sdpa, views made by the CPU (in the main "
        "process)"
    )
    with pytest.raises(LaunchConfigurationError, match=r"asked for FSDP \(`--fsdp full_shard`\), but the model"):
        check_launch(LaunchRequest(fsdp="`--fsdp full_shard`"), trainer)
    # what a launch of 4 processes on a machine without GPUs, without `--use_cpu`, gives in each of them
    with pytest.raises(LaunchConfigurationError, match=r"asked for 4 processes \(WORLD_SIZE=4\), but training would "
                       r"run 1 process: the processes were started but found no GPU, so each one trains alone"):
        check_launch(LaunchRequest(num_processes=4, num_processes_source="WORLD_SIZE=4"), trainer)
    check_launch(LaunchRequest(num_processes=1, num_processes_source="WORLD_SIZE=1"), trainer)  # what it got


# ------------------------------------------------------------------------------------- misconfigured launches
@pytest.mark.slow
@pytest.mark.parametrize(
    "launch_args, script_args, expected",
    [
        (FSDP_CPU, ["--use_cpu"], ["asked for FSDP", "model is not sharded", "accelerate applies FSDP only to GPU"]),
        (["--cpu", *FSDP_CPU], [], ["asked for 2 processes (`--num_processes` of `accelerate launch`)",
                                   "`accelerate launch --cpu` starts a single process"]),
    ],
    ids=["fsdp-with-use_cpu", "cpu-flag-of-the-launcher"],
)
def test_misconfigured_launches_stop_with_what_was_asked_and_how_to_launch(tmp_path, launch_args, script_args,
                                                                          expected):
    result = accelerate_launch(launch_args, [*run_pretraining_args(tmp_path / "out"), *script_args], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "LaunchConfigurationError" in output, output[-3000:]
    for text in expected:
        assert text in output, (text, output[-3000:])
    assert "accelerate launch --multi_gpu --num_processes 2 run_pretraining.py --use_cpu" in output  # the fix
    assert not (tmp_path / "out" / "model.safetensors").exists()


# ------------------------------------------------------------------------------------------- correct launches
@pytest.mark.slow
def test_ddp_launch_logs_what_is_in_effect_and_skips_the_unused_parameter_search(tmp_path):
    """run_pretraining.py on the digits (labelled: the online probe trains) under 2 CPU processes; the views are made
    on the device (the CPU default for the digits' 32 px views)."""
    result = accelerate_launch(DDP_CPU, [*run_pretraining_args(tmp_path / "out"), "--use_cpu"], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    line = "Launch in effect: DDP, 2 processes on 1 node, backend gloo, fp32, attention sdpa, views made on the device"
    assert output.count(line) == 1, output[-3000:]  # once, on the main process
    assert UNUSED_WARNING not in output
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert any("probe_accuracy" in entry for entry in state["log_history"])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Launch (in effect)" in card and "DDP, 2 processes on 1 node, backend gloo" in card


@pytest.mark.slow
def test_skipped_steps_and_the_probe_under_ddp_without_unused_parameter_search(tmp_path):
    """One image's views are NaN, twice in 2 epochs. Through SIGReg's all-reduced ECF both processes see a non-finite
    loss, both skip the step, and both end with the same parameters."""
    result = accelerate_launch(DDP_CPU, [WORKER, str(tmp_path), "--probe_and_nan"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert UNUSED_WARNING not in result.stderr + result.stdout
    ranks = read_ranks(tmp_path)
    assert [r["num_processes"] for r in ranks] == [2, 2]
    assert [r["nonfinite_steps"] for r in ranks] == [2, 2]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # the skipped steps were skipped on both processes
    assert all(e["probe_accuracy"] is not None for e in ranks[0]["history"])


@pytest.fixture(scope="module")
def ddp_vit_reference(tmp_path_factory):
    """The reference for FSDP and for two nodes: 6 steps of DDP under one 2-process launch."""
    output_dir = tmp_path_factory.mktemp("ddp-vit")
    result = accelerate_launch(DDP_CPU, [WORKER, str(output_dir), "--max_steps", "6"], output_dir.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, read_ranks(output_dir)[0]


def assert_same_training(run: dict, reference: dict) -> None:
    steps = [(e["step"], e["loss"]) for e in run["history"]]
    assert [s for s, _ in steps] == [e["step"] for e in reference["history"]]
    for (_, loss), expected in zip(steps, reference["history"]):
        assert loss == pytest.approx(expected["loss"], rel=1e-5)
    assert run["checksum"] == pytest.approx(reference["checksum"], rel=1e-6)  # sum of all parameters


def assert_same_weights(folder, reference_folder) -> None:
    loaded = LeJepaForPreTraining.from_pretrained(folder).state_dict()
    expected = LeJepaForPreTraining.from_pretrained(reference_folder).state_dict()
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


def assert_sharded_checkpoints(output_dir, steps) -> None:
    for step in steps:
        checkpoint = output_dir / f"checkpoint-{step}"
        assert (checkpoint / "pytorch_model_fsdp_0").is_dir() and (checkpoint / "optimizer_0").is_dir()
        assert not (checkpoint / "model.safetensors").exists()


@pytest.mark.slow
def test_fsdp_vit_sharded_checkpoints_resume_and_the_final_folder_loads(tmp_path, ddp_vit_reference):
    """FSDP2 through accelerate's own path, on CPU processes (accelerate's dispatch overridden in the worker, see
    tests/launch_worker.py): 4 steps, then a second launch resumes from the sharded checkpoint to step 6. The
    losses, parameters and final weights equal 6 steps of DDP (FSDP's reduce-scatter is DDP's mean)."""
    reference_dir, reference = ddp_vit_reference
    output_dir = tmp_path / "fsdp"
    for steps, extra in (("4", []), ("6", ["--resume"])):
        result = accelerate_launch(FSDP_CPU, [WORKER, str(output_dir), "--max_steps", steps, "--fsdp_on_cpu", *extra],
                                   tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    ranks = read_ranks(output_dir)
    assert ranks[0]["distributed_type"] == "FSDP"
    assert ranks[0]["launch_summary"].startswith("FSDP2 (4 sharded units")  # embeddings, 2 layers, the root
    assert_sharded_checkpoints(output_dir, (2, 4, 6))
    assert_same_training(ranks[0], reference)
    assert (output_dir / "modeling_lejepa.py").is_file() and not list(output_dir.glob("_fsdp*.py"))
    assert_same_weights(output_dir, reference_dir)


@pytest.mark.slow
def test_fsdp_resnet_with_batchnorm_trains_like_ddp(tmp_path):
    """A second backbone family, with BatchNorm in the backbone and the projector (per-process statistics, as DDP)."""
    outputs = {}
    for name, launch_args, extra in (("ddp", DDP_CPU, []), ("fsdp", FSDP_CPU, ["--fsdp_on_cpu"])):
        outputs[name] = tmp_path / name
        result = accelerate_launch(launch_args, [WORKER, str(outputs[name]), "--backbone", "resnet", *extra], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    fsdp, ddp = read_ranks(outputs["fsdp"])[0], read_ranks(outputs["ddp"])[0]
    assert fsdp["launch_summary"].startswith("FSDP2") and ddp["launch_summary"].startswith("DDP")
    assert_sharded_checkpoints(outputs["fsdp"], (2, 4))
    assert_same_training(fsdp, ddp)
    assert_same_weights(outputs["fsdp"], outputs["ddp"])


# --------------------------------------------------------------------------------------------------- two nodes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_loopback_train_like_one_two_process_launch(tmp_path, ddp_vit_reference):
    """The README's multi-node command, as two launcher invocations (machine ranks 0 and 1, 1 process each)."""
    reference_dir, reference = ddp_vit_reference
    port = str(free_port())
    nodes = [
        accelerate_launch(
            ["--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
             "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no",
             "--dynamo_backend", "no"],
            [WORKER, str(tmp_path), "--max_steps", "6"], tmp_path, wait=False,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    ranks = read_ranks(tmp_path)
    assert ranks[0]["launch_summary"].startswith("DDP, 2 processes on 2 nodes, backend gloo")
    assert_same_training(ranks[0], reference)
    assert_same_weights(tmp_path, reference_dir)
