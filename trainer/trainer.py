"""`LeJepaTrainer`: a `transformers.Trainer` for LeJEPA pretraining."""

from __future__ import annotations

import math
import os
import shutil
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Per-window sums of the loss terms (and of the online probe), logged next to Trainer's own `loss`.
_METRICS = ("prediction_loss", "sigreg_loss", "probe_loss", "probe_accuracy", "embedding_std")


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term is NaN or infinite and `LeJepaTrainer(on_nonfinite_loss="raise")`."""


class LeJepaTrainer(Trainer):
    """
    A [`~transformers.Trainer`] for [`LeJepaForPreTraining`] on batches of multi-crop views.

    `compute_loss` runs the model on `pixel_values` (global views) and `local_pixel_values`, seeds SIGReg's directions
    with the global step (identical on every process), and returns the LeJEPA loss. The prediction and SIGReg terms
    are averaged over the logging window and over processes and logged next to `loss` through Trainer's normal
    logging, so they reach the progress bar, the console and every `report_to` backend.

    Args:
        probe_num_labels (`int`, *optional*):
            When set and batches carry `labels`, an online linear probe (LayerNorm + Linear on the detached embedding
            of the first global view) trains alongside, in its own optimizer parameter group, and `probe_accuracy`
            is logged. It never changes the pretraining gradients nor the logged `loss`.
        probe_learning_rate (`float`, *optional*, defaults to 1e-3):
            Learning rate of the probe's parameter group (no weight decay).
        on_nonfinite_loss (`str`, *optional*, defaults to `"raise"`):
            What to do when a loss term is NaN or infinite: `"raise"` stops the run naming the step and the term,
            `"skip"` zeroes that step's loss (no update from it) and counts it in `nonfinite_steps`.
        collapse_std_threshold (`float`, *optional*, defaults to 1e-3):
            A warning is logged when the mean per-dimension standard deviation of the embeddings falls below it.
        kwargs: passed to [`~transformers.Trainer`].
    """

    def __init__(
        self,
        *args,
        probe_num_labels: int | None = None,
        probe_learning_rate: float = 1e-3,
        on_nonfinite_loss: str = "raise",
        collapse_std_threshold: float = 1e-3,
        **kwargs,
    ):
        if on_nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"`on_nonfinite_loss` must be 'raise' or 'skip', got {on_nonfinite_loss!r}.")
        super().__init__(*args, **kwargs)
        self.on_nonfinite_loss = on_nonfinite_loss
        self.collapse_std_threshold = collapse_std_threshold
        self.nonfinite_steps = 0
        self.probe: nn.Module | None = None
        self.probe_learning_rate = probe_learning_rate
        if probe_num_labels:
            size = self.model.lejepa.embedding_size
            self.probe = nn.Sequential(nn.LayerNorm(size), nn.Linear(size, probe_num_labels)).to(self.args.device)
        self._window = {name: 0.0 for name in _METRICS}
        self._window_counts = {name: 0 for name in _METRICS}
        self._skipped_images: torch.Tensor | int = 0  # on this process, since the start of training

    # ------------------------------------------------------------------------------------------------ optimisation
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.probe is not None and not any(
            p is q for group in optimizer.param_groups for p in group["params"] for q in self.probe.parameters()
        ):
            optimizer.add_param_group(
                {"params": list(self.probe.parameters()), "lr": self.probe_learning_rate, "weight_decay": 0.0}
            )
        return optimizer

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        labels = inputs.get("labels")
        if inputs.get("num_skipped") is not None:  # images of this batch that failed to decode (MultiCropCollator)
            self._skipped_images = self._skipped_images + inputs["num_skipped"].detach().sum()
        outputs = model(
            pixel_values=inputs["pixel_values"],
            local_pixel_values=inputs.get("local_pixel_values"),
            step=self.state.global_step,
        )
        loss = outputs.loss
        if not torch.isfinite(loss):  # the one host sync of the step (Trainer checks its loss for NaN too)
            return self._handle_nonfinite(outputs, return_outputs)
        self._accumulate("prediction_loss", outputs.prediction_loss)
        self._accumulate("sigreg_loss", outputs.sigreg_loss)
        embeddings = outputs.embeddings[:, 0].detach()  # (B, D), first global view
        self._accumulate("embedding_std", embeddings.float().std(dim=0).mean())
        if self.probe is not None and labels is not None and model.training:
            logits = self.probe(embeddings.float())
            probe_loss = nn.functional.cross_entropy(logits, labels)  # unlabelled images (-100) are ignored
            labelled = labels != -100
            self._accumulate("probe_loss", probe_loss.detach())
            self._accumulate("probe_accuracy", (logits.argmax(-1) == labels)[labelled].float().mean())
            # The probe's gradient joins the backward pass without changing the value of the loss.
            loss = loss + (probe_loss - probe_loss.detach())
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.probe is not None and dist.is_available() and dist.is_initialized():
            # The probe is not wrapped by DDP: average its gradients ourselves so every process keeps the same probe.
            for parameter in self.probe.parameters():
                if parameter.grad is not None:
                    dist.all_reduce(parameter.grad)
                    parameter.grad /= dist.get_world_size()
        return loss

    def _handle_nonfinite(self, outputs, return_outputs: bool) -> torch.Tensor | tuple[torch.Tensor, Any]:
        terms = {
            "loss": outputs.loss.item(),
            "prediction_loss": outputs.prediction_loss.item(),
            "sigreg_loss": outputs.sigreg_loss.item(),
        }
        bad = ", ".join(f"{name}={value}" for name, value in terms.items() if not math.isfinite(value))
        if self.on_nonfinite_loss == "raise":
            raise NonFiniteLossError(
                f"Non-finite loss at step {self.state.global_step}: {bad}. Lower the learning rate, check the inputs, "
                "or pass `on_nonfinite_loss='skip'` (`--on_nonfinite_loss skip`) to skip such steps."
            )
        self.nonfinite_steps += 1
        logger.warning(
            f"Skipping step {self.state.global_step}: non-finite {bad} (skipped so far: {self.nonfinite_steps})."
        )
        # A zero loss connected to the graph: no update from this batch, and DDP still sees every parameter.
        loss = sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)
        return (loss, outputs) if return_outputs else loss

    # ----------------------------------------------------------------------------------------------------- logging
    def _accumulate(self, name: str, value: torch.Tensor) -> None:
        # Kept on the device: no host sync until the next log.
        self._window[name] = self._window[name] + value.detach().double()
        self._window_counts[name] += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the window means of the loss terms, averaged over processes
            sums = torch.stack([torch.as_tensor(self._window[n], dtype=torch.float64).to(self.args.device)
                                for n in _METRICS])
            counts = torch.tensor([self._window_counts[n] for n in _METRICS], dtype=torch.float64, device=sums.device)
            if self.accelerator.num_processes > 1:
                sums, counts = self.accelerator.reduce(sums, "sum"), self.accelerator.reduce(counts, "sum")
            for name, total, count in zip(_METRICS, sums.tolist(), counts.tolist()):
                if count > 0:
                    logs[name] = round(total / count, 6)
            skipped = torch.as_tensor(self._skipped_images, dtype=torch.float64).to(self.args.device)
            if self.accelerator.num_processes > 1:
                skipped = self.accelerator.reduce(skipped, "sum")
            if skipped.item() > 0:
                logs["skipped_images"] = int(skipped.item())
            if self.nonfinite_steps:
                logs["nonfinite_steps"] = self.nonfinite_steps
            std = logs.get("embedding_std")
            if std is not None and std < self.collapse_std_threshold:
                logger.warning(
                    f"Possible collapse at step {self.state.global_step}: the embeddings' mean standard deviation is "
                    f"{std:.2e} (< {self.collapse_std_threshold}). Consider a larger `lambda_sigreg` or a lower "
                    "learning rate."
                )
            self._window = {name: 0.0 for name in _METRICS}
            self._window_counts = {name: 0 for name in _METRICS}
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------------- the Hub
    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> None:
        """Writes the LeJEPA model card (`model_cards.build_model_card`: recipe, loss curves, evaluation results kept
        from earlier cards) into `output_dir`, instead of Trainer's generic one. Called by `push_to_hub`."""
        if not self.is_world_process_zero():
            return
        from model_cards import build_model_card

        build_model_card(
            self.model.config,
            self.args.output_dir,
            training_args=self.args.to_dict() | {"world_size": self.args.world_size},
            log_history=self.state.log_history,
            dataset_names=dataset or dataset_tags,
            base_model=finetuned_from,
            license=license or "apache-2.0",
            model_id=self.hub_model_id or model_name,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Trainer copies only config and weights into output_dir before an intermediate push: bring the remote code
        # along and write our card, so that every revision on the Hub loads with `trust_remote_code=True`.
        if self.is_world_process_zero() and self.args.hub_strategy != "end":
            for name in os.listdir(checkpoint_folder):
                if name.endswith(".py"):
                    shutil.copy(os.path.join(checkpoint_folder, name), os.path.join(self.args.output_dir, name))
            self.create_model_card()
        super()._push_from_checkpoint(checkpoint_folder)
