"""
What a launch asked for and what is really in effect: one summary line at the start of training, and an error when
the two disagree (FSDP asked but the model not sharded, several processes asked and one running).

accelerate falls back silently in several launches users make: `accelerate launch --config_file fsdp.yaml ...
--use_cpu` wraps the model in DDP (accelerate 1.15 applies FSDP only to accelerator processes), the same launch
without `--use_cpu` on a machine without GPUs starts processes that each train alone, and `accelerate launch --cpu
--num_processes 2` starts a single process. [`LaunchCheckCallback`] (added by [`LeJepaTrainer`]) stops such runs
before their first step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from accelerate.utils import DistributedType
from torch import nn
from transformers import TrainerCallback
from transformers.utils import logging

if TYPE_CHECKING:
    from transformers import Trainer

logger = logging.get_logger(__name__)

# Launch commands that work, quoted by the errors below (and tested in tests/test_launch.py).
CPU_DDP_LAUNCH = "accelerate launch --multi_gpu --num_processes {n} run_pretraining.py --use_cpu ..."
GPU_FSDP_LAUNCH = (
    "accelerate launch --config_file accelerate_configs/fsdp.yaml --num_processes <GPUs> run_pretraining.py ..."
)


class LaunchConfigurationError(RuntimeError):
    """The launch asked for a distributed setup (FSDP, DeepSpeed, several processes) that is not in effect."""


@dataclass
class LaunchRequest:
    """What the launch asked for, from the `ACCELERATE_*` environment, the training arguments and, for accelerate's
    single-process launcher, its command line."""

    fsdp: str | None = None  # where FSDP was asked for, e.g. "ACCELERATE_USE_FSDP=true (the launch config)"
    deepspeed: str | None = None
    num_processes: int | None = None
    num_processes_source: str | None = None
    launcher_cpu: bool = False  # `accelerate launch --cpu`: accelerate's single-process launcher


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def launcher_arguments() -> list[str] | None:
    """The arguments of the `accelerate launch` command that started this process (its parent), or `None`."""
    try:
        import psutil  # a dependency of accelerate

        command = psutil.Process(os.getppid()).cmdline()
    except Exception:  # no parent to read (e.g. permissions): nothing is known about the launcher
        return None
    for i, token in enumerate(command):
        name = os.path.basename(token)
        if name == "accelerate-launch" or token == "accelerate.commands.launch" and command[i - 1] == "-m":
            return command[i + 1 :]
        if token == "launch" and i > 0 and os.path.basename(command[i - 1]) == "accelerate":
            return command[i + 1 :]
    return None


def requested_launch(args) -> LaunchRequest:
    """What the launch asked for (see [`LaunchRequest`])."""
    request = LaunchRequest()
    if _env_flag("ACCELERATE_USE_FSDP"):
        request.fsdp = "ACCELERATE_USE_FSDP=true (from the launch config or `--use_fsdp`)"
    elif getattr(args, "fsdp", None):
        request.fsdp = f"`--fsdp {' '.join(str(option) for option in args.fsdp)}`"
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or getattr(args, "deepspeed", None):
        request.deepspeed = "ACCELERATE_USE_DEEPSPEED=true or `--deepspeed`"
    if os.environ.get("WORLD_SIZE"):  # set by torchrun / accelerate's multi-process launcher
        request.num_processes = int(os.environ["WORLD_SIZE"])
        request.num_processes_source = f"WORLD_SIZE={request.num_processes} (set by the launcher)"
    elif "ACCELERATE_USE_CPU" in os.environ or "ACCELERATE_MIXED_PRECISION" in os.environ:
        # accelerate's single-process launcher, which ignores `--num_processes`: read what the command asked for
        launcher = launcher_arguments()
        if launcher is not None:
            from accelerate.commands.config import load_config_from_file
            from accelerate.commands.launch import launch_command_parser

            try:  # accelerate's own parser and config reader, as `accelerate launch` itself used them
                parsed, _ = launch_command_parser().parse_known_args(launcher)
                num_processes, source = parsed.num_processes, "`--num_processes`"
                if num_processes is None and parsed.config_file:
                    num_processes = load_config_from_file(parsed.config_file).num_processes
                    source = f"`num_processes` in {parsed.config_file}"
            except (SystemExit, Exception):  # a command line this accelerate cannot read: nothing is known
                return request
            if num_processes is not None:
                request.num_processes = int(num_processes)
                request.num_processes_source = f"{source} of `accelerate launch`"
            request.launcher_cpu = bool(parsed.cpu)
    return request


def _sharded_units(trainer: Trainer) -> int:
    """Number of FSDP units (FSDP2 `fully_shard` modules or FSDP1 wrappers) of the prepared model; 0 if unsharded."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    models = {id(m): m for m in (trainer.model, trainer.model_wrapped) if isinstance(m, nn.Module)}
    return sum(
        isinstance(module, (FSDPModule, FullyShardedDataParallel))
        for model in models.values()
        for module in model.modules()
    )


def effective_launch(trainer: Trainer, num_sharded_units: int | None = None) -> dict[str, str | int]:
    """What is in effect for `trainer` (after its model is prepared): distributed type, processes, nodes, backend,
    mixed precision, attention implementation and where the views are made."""
    accelerator, args = trainer.accelerator, trainer.args
    state = accelerator.state
    kind = accelerator.distributed_type
    units = _sharded_units(trainer) if num_sharded_units is None else num_sharded_units
    if kind == DistributedType.NO:
        distributed = "single process"
    elif kind == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        strategy = "reshard after forward" if getattr(plugin, "reshard_after_forward", True) else "no reshard"
        state_dict = str(getattr(plugin, "state_dict_type", "")).split(".")[-1]
        distributed = f"FSDP{plugin.fsdp_version} ({units} sharded units, {strategy}, {state_dict} checkpoints)"
    elif kind == DistributedType.DEEPSPEED:
        stage = state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", "?")
        distributed = f"DeepSpeed ZeRO-{stage}"
    elif kind.name.startswith("MULTI_"):
        distributed = "DDP"
    else:
        distributed = kind.name
    num_processes = accelerator.num_processes
    local = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes) or num_processes)
    model = accelerator.unwrap_model(trainer.model)
    backbone = getattr(getattr(model, "lejepa", model), "backbone", None)
    backbone_config = getattr(backbone, "config", None)
    if backbone_config is None or not hasattr(backbone_config, "num_attention_heads"):
        attention = "none (convolutional backbone)" if backbone_config is not None else "unknown"
        if getattr(backbone_config, "model_type", None) == "timm_wrapper":
            attention = "timm's own"
    else:
        attention = backbone_config._attn_implementation or "eager"
    if getattr(trainer, "augment_on_device", getattr(args, "augment_on_device", None)):  # as resolved by the trainer
        views = "on the device"
    elif args.dataloader_num_workers > 0:
        views = f"by CPU workers ({args.dataloader_num_workers} DataLoader workers per process)"
    else:
        views = "by the CPU (in the main process)"
    return {
        "distributed": distributed,
        "processes": num_processes,
        "nodes": max(1, num_processes // max(local, 1)),
        "backend": state.backend or "none",
        "mixed_precision": "fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision,
        "attention": attention,
        "views": views,
    }


def describe_launch(effective: dict[str, str | int]) -> str:
    """One line, e.g. `"DDP, 2 processes on 1 node, backend gloo, fp32, attention sdpa, views made by CPU workers"`."""
    processes = f"{effective['processes']} process{'es' if effective['processes'] != 1 else ''}"
    nodes = f"{effective['nodes']} node{'s' if effective['nodes'] != 1 else ''}"
    return (
        f"{effective['distributed']}, {processes} on {nodes}, backend {effective['backend']}, "
        f"{effective['mixed_precision']}, attention {effective['attention']}, views made {effective['views']}"
    )


def check_launch(request: LaunchRequest, trainer: Trainer, num_sharded_units: int | None = None) -> None:
    """Raises [`LaunchConfigurationError`] when what `request` asked for is not what `trainer` runs."""
    accelerator = trainer.accelerator
    kind = accelerator.distributed_type
    got = accelerator.num_processes
    if request.num_processes is not None and request.num_processes > got:
        asked = f"{request.num_processes} processes ({request.num_processes_source})"
        if request.launcher_cpu:
            cause = "`accelerate launch --cpu` starts a single process, whatever `--num_processes` says"
        elif kind == DistributedType.NO:
            cause = (
                "the processes were started but found no GPU, so each one trains alone on the CPU (independent "
                "copies of the same run, not one run)"
            )
        else:
            cause = f"this process group has {got}"
        raise LaunchConfigurationError(
            f"The launch asked for {asked}, but training would run {got} process{'es' if got != 1 else ''}: {cause}. "
            f"For CPU processes (gloo), launch `{CPU_DDP_LAUNCH.format(n=request.num_processes)}`; on GPUs, launch "
            "`accelerate launch --config_file accelerate_configs/ddp.yaml --num_processes <GPUs> run_pretraining.py "
            "...` without `--use_cpu`."
        )
    if request.fsdp is not None:
        units = _sharded_units(trainer) if num_sharded_units is None else num_sharded_units
        if kind != DistributedType.FSDP or units == 0:
            if kind == DistributedType.MULTI_CPU:
                cause = (
                    "accelerate applies FSDP only to GPU (accelerator) processes: with `--use_cpu` it wraps the model "
                    "in DDP instead, so nothing is sharded"
                )
            else:
                cause = f"the model was prepared as {describe_launch(effective_launch(trainer, units))}"
            raise LaunchConfigurationError(
                f"The launch asked for FSDP ({request.fsdp}), but the model is not sharded: {cause}. To shard, "
                f"launch on GPUs without `--use_cpu`: `{GPU_FSDP_LAUNCH}`. To try several CPU processes without "
                f"sharding, use DDP: `{CPU_DDP_LAUNCH.format(n=max(got, 2))}`."
            )
    if request.deepspeed is not None and kind != DistributedType.DEEPSPEED:
        raise LaunchConfigurationError(
            f"The launch asked for DeepSpeed ({request.deepspeed}), but the model was prepared as "
            f"{describe_launch(effective_launch(trainer))} (accelerate ignores DeepSpeed on CPU processes). Launch on "
            "GPUs without `--use_cpu`."
        )


class LaunchCheckCallback(TrainerCallback):
    """
    At the start of training (the model is prepared), checks the launch ([`check_launch`]) and logs what is in effect
    in one line ([`describe_launch`]); the line is kept as `trainer.launch_summary` for the model card.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        units = _sharded_units(trainer)
        check_launch(requested_launch(args), trainer, units)
        trainer.launch_summary = describe_launch(effective_launch(trainer, units))
        if trainer.is_world_process_zero():
            logger.info(f"Launch in effect: {trainer.launch_summary}")


def freeze_unused_parameters(model: nn.Module) -> list[str]:
    """
    Freezes the parameters that LeJEPA's forward never uses, the masked-image-modeling `mask_token` of DINOv2 (and of
    ViT built with `use_mask_token`): LeJEPA never masks. DDP without `find_unused_parameters` (LeJEPA's default)
    fails on a parameter that gets no gradient; frozen, it is left out of DDP and of the optimizer, and keeps its
    value, as it would have with `find_unused_parameters=True`. Returns the frozen parameters' names.
    """
    frozen = []
    for name, parameter in model.named_parameters():
        if name.split(".")[-1] == "mask_token" and parameter.requires_grad:
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def plain_model_for_saving(model: nn.Module, state_dict: dict | None) -> nn.Module:
    """
    The model to call `save_pretrained` on after FSDP: FSDP2's `fully_shard` turns the model's class into a subclass
    defined in torch (`FSDPLeJepaForPreTraining`), whose `save_pretrained` would copy torch's files as the remote
    code. Given the gathered `state_dict` (on the saving process), returns a model of the original class holding it,
    built on the meta device (no second initialisation, no copy of the weights); otherwise `model` itself.
    """
    from torch.distributed.fsdp import FSDPModule

    if state_dict is None or not isinstance(model, FSDPModule):
        return model
    model_class = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        plain = model_class(model.config)
    plain.load_state_dict(state_dict, strict=True, assign=True)
    return plain


__all__ = [
    "LaunchCheckCallback",
    "LaunchConfigurationError",
    "LaunchRequest",
    "check_launch",
    "describe_launch",
    "effective_launch",
    "freeze_unused_parameters",
    "plain_model_for_saving",
    "requested_launch",
]
