"""`LeJepaTrainer`: a `transformers.Trainer` for LeJEPA pretraining."""

from __future__ import annotations

import math
import os
import time
import types
from collections.abc import Callable
from typing import Any

import datasets
import safetensors.torch
import torch
from accelerate.utils import gather_object
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, Trainer
from transformers.trainer_utils import EvalLoopOutput
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, logging

from .arguments import check_nonfinite_policy, lejepa_option, resolve_augment_on_device
from .callbacks import (
    _CHECKPOINT_RE,
    GracefulShutdownCallback,
    StreamStateCallback,
    get_last_complete_checkpoint,
    is_complete_checkpoint,
    read_stream_states,
    stream_state_callback,
)
from .data.collator import JPEG_BYTES_KEY
from .data.device_views import DeviceMultiCrop, _to_device, append_device_decoded, view_generator
from .data.views import DecodeResizeTransform
from .hub import check_hub_strategy, push_from_checkpoint, write_training_args
from .launch import LaunchCheckCallback, freeze_unused_parameters, plain_model_for_saving
from .throughput import TrainingFlops, peak_flops
from .validation import (
    EVAL_SIGREG_SEED,
    broadcast_buffers,
    validation_dataloader,
    validation_metrics,
    weighted_loss_terms,
)

logger = logging.get_logger(__name__)

PROBE_WEIGHTS_NAME = "probe.safetensors"  # the online probe's weights, in each checkpoint
# Per-window sums of the loss terms (and of the online probe), logged next to Trainer's own `loss`.
_METRICS = ("prediction_loss", "sigreg_loss", "probe_loss", "probe_accuracy", "embedding_std")


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term is NaN or infinite and `LeJepaTrainer(on_nonfinite_loss="raise")`."""


class NoTrainingDataError(RuntimeError):
    """Raised on every process when a process's part of a streamed training set gives no batch (`LeJepaTrainer`)."""


class LeJepaTrainer(Trainer):
    """
    A [`~transformers.Trainer`] for [`LeJepaForPreTraining`] on batches of multi-crop views.

    `compute_loss` runs the model on `pixel_values` (global views) and `local_pixel_values`, seeds SIGReg's directions
    with the global step (identical on every process), and returns the LeJEPA loss. The prediction and SIGReg terms
    are averaged over the logging window and over processes and logged next to `loss` through Trainer's normal
    logging, so they reach the progress bar, the console and every `report_to` backend.

    The LeJEPA options (`online_probe`, `probe_learning_rate`, `on_nonfinite_loss`, `collapse_std_threshold`,
    `save_on_sigterm`) are read from `args` when it is a [`LeJepaTrainingArguments`] (their defaults otherwise), as
    `Seq2SeqTrainer` reads its options from `Seq2SeqTrainingArguments`; a keyword argument of the same name overrides
    them. With `on_nonfinite_loss="skip"` a skipped step leaves the parameters, optimizer state and BatchNorm
    statistics as they were (the learning-rate schedule moves on), is counted in `nonfinite_steps` and logged; with
    several processes the step is skipped on all of them when any one sees a non-finite loss. With `save_on_sigterm`,
    SIGTERM saves a checkpoint at the end of the current step and stops (`GracefulShutdownCallback`;
    `stopped_by_signal` then holds the signal number).

    A streamed `train_dataset` (`datasets.IterableDataset`) is read in passes until `max_steps`: it is repeated without
    end (`IterableDataset.repeat(None)`; Accelerate's `shard` splits the data sources under the repeat), so each
    process starts its next pass over its own shards when it runs out, whatever their sizes and however many bad
    images were filtered out of them. Every process thus has a batch at every step and the processes make the same
    collective calls; an epoch of a stream is one process's pass over its shards, and processes with less data start
    their next pass sooner (each pass in the same order, with new views). At the first step of `train()` the processes
    check together that each one got a batch: a process whose shards hold no usable image (or whose data loading
    raised) stops the run with a `NoTrainingDataError` on every process, naming it and the fix. For streamed datasets
    (with `torchdata` installed and `dataloader_num_workers=0`), the position in the stream is saved in every
    checkpoint and restored on resume (`StreamStateCallback`); otherwise a resumed run re-reads the stream up to the
    checkpoint. At the start of training `LaunchCheckCallback` logs what is in effect (distributed type, processes,
    backend, precision, attention, where the views are made; kept as `launch_summary` for the model card) and stops a
    launch that asked for FSDP, DeepSpeed or several processes and did not get them
    (`trainer.launch.LaunchConfigurationError`).

    `evaluate` reports `eval_loss`, `eval_prediction_loss` and `eval_sigreg_loss`: the LeJEPA loss of the model in
    eval mode (projector BatchNorm on its running statistics, those of process 0) on fixed views (see
    `trainer.data.prepare_validation_dataset`) and fixed SIGReg directions (seed `EVAL_SIGREG_SEED`), over the whole
    validation set. SIGReg is a statistic of a batch, so the set is cut into consecutive blocks of
    `per_device_eval_batch_size * world_size` images in index order (the last block may be smaller), SIGReg is
    computed on each whole block (its ECF averaged over processes, as in training), and the terms are averaged over
    images: `eval_prediction_loss` is the mean over images, `eval_sigreg_loss` the mean of the blocks' SIGReg weighted
    by their sizes, `eval_loss = (1 - lambda) * eval_prediction_loss + lambda * eval_sigreg_loss`. The value depends
    only on the model, the validation set and the global eval batch size: the same with 1 or several processes (to
    float32 rounding) and at every evaluation, so `metric_for_best_model="eval_loss"` selects checkpoints without
    labels. With `eval_embedding_metrics`, its metrics (e.g. `knn_accuracy`) are logged beside them.

    With `augment_on_device` (an option read as those above; on by default on accelerators, off on CPUs), batches from
    `MultiCropCollator` carry `uint8` `images` and their `image_sizes` instead of views; `_prepare_inputs` moves them
    to the device and makes the views there (`DeviceMultiCrop`, with a generator seeded from the seed, the global step
    and the process index). Training logs also carry `images_per_second` (all processes, over the logging window) and,
    on a GPU whose peak is known, `mfu` (model FLOPs of every view at its own resolution, 3 x forward, over the dense
    bf16 peak).

    Args:
        probe_num_labels (`int`, *optional*):
            When set and batches carry `labels`, an online linear probe (LayerNorm + Linear on the detached embedding
            of the first global view) trains alongside, in its own optimizer parameter group, and `probe_accuracy`
            is logged. It never changes the pretraining gradients nor the logged `loss`.
        eval_embedding_metrics (`Callable`, *optional*):
            Called at each evaluation with the unwrapped model (on every process) and returning a `dict` of metrics
            of its frozen embeddings, such as `{"knn_accuracy": 0.9}`, logged with the `eval_` prefix.
        device_views (`DeviceMultiCrop`, *optional*):
            The on-device augmentation used with `augment_on_device`; by default built from the model's config and
            the `processing_class`'s mean and std (`DeviceMultiCrop.from_lejepa_config`).
        kwargs: passed to [`~transformers.Trainer`].
    """

    def __init__(
        self,
        *args,
        probe_num_labels: int | None = None,
        probe_learning_rate: float | None = None,
        on_nonfinite_loss: str | None = None,
        collapse_std_threshold: float | None = None,
        save_on_sigterm: bool | None = None,
        eval_embedding_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
        augment_on_device: bool | None = None,
        device_views: DeviceMultiCrop | None = None,
        **kwargs,
    ):
        if on_nonfinite_loss is not None:
            check_nonfinite_policy(on_nonfinite_loss)
        check_hub_strategy(kwargs.get("args", args[1] if len(args) > 1 else None))  # before the Hub repository
        super().__init__(*args, **kwargs)
        self.on_nonfinite_loss = lejepa_option(self.args, "on_nonfinite_loss", on_nonfinite_loss)
        self.collapse_std_threshold = lejepa_option(self.args, "collapse_std_threshold", collapse_std_threshold)
        self.probe_learning_rate = lejepa_option(self.args, "probe_learning_rate", probe_learning_rate)
        save_on_sigterm = lejepa_option(self.args, "save_on_sigterm", save_on_sigterm)
        self.nonfinite_steps = 0
        self.eval_embedding_metrics = eval_embedding_metrics
        self.augment_on_device = resolve_augment_on_device(
            self.args, augment_on_device, getattr(self.model.config, "global_image_size", None)
        )
        self.device_views: DeviceMultiCrop | None = None
        if self.augment_on_device:
            self.device_views = device_views or DeviceMultiCrop.from_lejepa_config(
                self.model.config, self.processing_class
            )
        # the bounded size of the JPEGs decoded on the device (`decode_on_device`), as the workers resize theirs
        self._device_resize = DecodeResizeTransform(self.device_views.config) if self.device_views else None
        self._view_step, self._view_micro_step = -1, 0  # seeds of the device views' generator
        self._training_flops = TrainingFlops(self.model.config)
        self._window_start, self._window_images, self._window_flops = time.perf_counter(), 0, 0.0
        self.probe: nn.Module | None = None
        if probe_num_labels and lejepa_option(self.args, "online_probe"):
            size = self.model.lejepa.embedding_size
            self.probe = nn.Sequential(nn.LayerNorm(size), nn.Linear(size, probe_num_labels)).to(self.args.device)
        self._window = {name: 0.0 for name in _METRICS}
        self._window_counts = {name: 0 for name in _METRICS}
        self._skipped_images: torch.Tensor | int = 0  # on this process, since the start of training
        self._skip_optimizer_step = False  # a non-finite loss was skipped since the last optimizer step
        self._microstep_skipped = False
        self.graceful_shutdown = GracefulShutdownCallback() if save_on_sigterm else None
        if self.graceful_shutdown is not None:
            self.add_callback(self.graceful_shutdown)
        self.launch_summary: str | None = None  # what is in effect, set at the start of training (LaunchCheckCallback)
        self.add_callback(LaunchCheckCallback(self))
        self.stream_state_callback: StreamStateCallback | None = None  # streams: their position in checkpoints
        self._data_checked = False  # whether every process got a first batch in this `train()` (streams)
        if isinstance(self.train_dataset, datasets.IterableDataset):
            # Each process reads passes over its own shards until `max_steps` (see the class docstring).
            self.train_dataset = self.train_dataset.repeat(None)
            self.stream_state_callback = stream_state_callback(self.accelerator, self.args)
            if self.stream_state_callback is not None:
                self.add_callback(self.stream_state_callback)

    @property
    def stopped_by_signal(self) -> int | None:
        """The signal (e.g. `signal.SIGTERM`) on which the last `train()` saved a checkpoint and stopped, or `None`."""
        return self.graceful_shutdown.stopped_by_signal if self.graceful_shutdown is not None else None

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """
        `Trainer.train`, resuming only from complete checkpoints (see `trainer.callbacks.is_complete_checkpoint`):
        `resume_from_checkpoint=True` picks the last complete `checkpoint-N` of `output_dir` (a folder half-written by
        a killed run is skipped), and for a streamed dataset the position saved in the checkpoint is restored instead
        of re-reading the stream.
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint found in output directory ({self.args.output_dir}).")
        elif (
            isinstance(resume_from_checkpoint, (str, os.PathLike))
            and _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(resume_from_checkpoint)))
            and not is_complete_checkpoint(resume_from_checkpoint)
        ):
            parent = os.path.dirname(os.path.normpath(resume_from_checkpoint))
            raise ValueError(
                f"{resume_from_checkpoint} is an incomplete checkpoint (no readable trainer_state.json: the run was "
                f"probably killed while saving it). The last complete one is {get_last_complete_checkpoint(parent)}."
            )
        frozen = freeze_unused_parameters(self.model)  # DDP runs without find_unused_parameters
        if frozen:
            logger.info(f"Frozen, as LeJEPA's forward never uses them: {', '.join(frozen)}.")
        ignore_data_skip = self.args.ignore_data_skip
        if resume_from_checkpoint and self.stream_state_callback is not None and not ignore_data_skip:
            states = read_stream_states(resume_from_checkpoint)
            if states is None:
                logger.warning(f"{resume_from_checkpoint} has no saved stream position: re-reading the stream to it.")
            elif len(states) != self.args.world_size or self.args.restore_callback_states_from_checkpoint:
                logger.warning(
                    f"{resume_from_checkpoint} saved the stream position of {len(states)} process(es), this run has "
                    f"{self.args.world_size}: re-reading the stream to the checkpoint instead."
                )
            else:
                self.stream_state_callback.load_pending(states[self.args.process_index])
                self.args.ignore_data_skip = True  # the saved position replaces Trainer's skipping of seen batches
        self._window_start, self._window_images, self._window_flops = time.perf_counter(), 0, 0.0
        self._data_checked = False
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self.args.ignore_data_skip = ignore_data_skip
            if self.graceful_shutdown is not None:  # on_train_end is not called when training raises
                self.graceful_shutdown.restore_handlers()

    # ------------------------------------------------------------------------------------------------- checkpoints
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # transformers 5's `save_pretrained` writes checkpoints in the original (transformers 4) key layout
        # (`save_original_format=True`), e.g. ViT's `encoder.layer.0.attention.attention.query`, but
        # `Trainer._load_from_checkpoint` (transformers 5.24, the lower bound in setup.cfg) loads them with a plain
        # non-strict `load_state_dict`: the renamed backbone keys would be skipped with a warning and the run would go
        # on from the *initial* backbone weights. `from_pretrained` applies the key conversion; the result is loaded
        # strictly (also right for a Trainer that converts the keys itself).
        target = self.model if model is None else model
        weights = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)
        if (
            isinstance(target, PreTrainedModel)
            and any(os.path.isfile(os.path.join(resume_from_checkpoint, name)) for name in weights)
            and not (self.is_fsdp_enabled or self.is_deepspeed_enabled)
        ):
            logger.info(f"Loading model from {resume_from_checkpoint}.")
            loaded = type(target).from_pretrained(resume_from_checkpoint, config=target.config, use_safetensors=True)
            target.load_state_dict(loaded.state_dict(), strict=True)
            del loaded
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        probe_file = os.path.join(resume_from_checkpoint, PROBE_WEIGHTS_NAME)
        if self.probe is not None and os.path.isfile(probe_file):
            self.probe.load_state_dict(safetensors.torch.load_file(probe_file, device=str(self.args.device)))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`; under FSDP (whatever the checkpoints' state-dict type) the final folder gets the
        gathered weights as `model.safetensors` and the LeJEPA code, so that it loads with `from_pretrained`."""
        if self.is_fsdp_enabled and not _internal_call:
            state_dict = self.accelerator.get_state_dict(self.model)  # a collective: the full weights on process 0
            sharded_model = self.model
            self.model = plain_model_for_saving(sharded_model, state_dict if self.args.should_save else None)
            try:
                self._save(output_dir, state_dict=state_dict)
            finally:
                self.model = sharded_model
            return
        super().save_model(output_dir, _internal_call)

    def _load_best_model(self) -> None:
        # Trainer's own version (5.24) has the same non-strict load as `_load_from_checkpoint` (see there).
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_best_model()
        logger.info(f"Loading best model from {self.state.best_model_checkpoint} (score: {self.state.best_metric}).")
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # Written before trainer_state.json, the file that marks a checkpoint complete.
        if self.probe is not None and self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            state = {name: tensor.detach().contiguous() for name, tensor in self.probe.state_dict().items()}
            safetensors.torch.save_file(state, os.path.join(output_dir, PROBE_WEIGHTS_NAME))
        super()._save_optimizer_and_scheduler(output_dir)

    # ------------------------------------------------------------------------------------------------ optimisation
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.probe is not None and not any(
            p is q for group in optimizer.param_groups for p in group["params"] for q in self.probe.parameters()
        ):
            optimizer.add_param_group(
                {"params": list(self.probe.parameters()), "lr": self.probe_learning_rate, "weight_decay": 0.0}
            )
        if not getattr(optimizer.step, "_lejepa_skippable", False):
            # A skipped (non-finite) step must not move the parameters: a zero gradient alone would not do, as AdamW
            # still applies its momentum and weight decay. A bound method, as torch's LR scheduler expects.
            original_step = optimizer.step

            def step(optimizer_self, *args, **kwargs):
                if self._take_skip_optimizer_step():
                    return None
                return original_step(*args, **kwargs)

            step._lejepa_skippable = True
            optimizer.step = types.MethodType(step, optimizer)
        return optimizer

    def _take_skip_optimizer_step(self) -> bool:
        skip, self._skip_optimizer_step = self._skip_optimizer_step, False
        if self.on_nonfinite_loss == "skip" and self.accelerator.num_processes > 1:
            flag = torch.tensor(1.0 if skip else 0.0, device=self.args.device)
            skip = self.accelerator.reduce(flag, "sum").item() > 0  # every process skips the same steps
        return skip

    # ---------------------------------------------------------------------------------------- views on the device
    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Trainer's device placement; then, for batches of `uint8` `images` (`augment_on_device`), the multi-crop
        views made on the device, so that `compute_loss` gets `pixel_values` and `local_pixel_values` as always. The
        JPEGs a batch carries as bytes (`decode_on_device`) are decoded and resized on the device first; those that
        fail are left out (with their labels) and counted in `num_skipped`."""
        inputs = super()._prepare_inputs(inputs)
        if "images" not in inputs and JPEG_BYTES_KEY not in inputs:
            return inputs
        if self.device_views is None:
            raise ValueError(
                "The batch holds uint8 `images` for views made on the device (DecodeResizeTransform), but "
                "`augment_on_device` is off: pass `--augment_on_device` (`LeJepaTrainer(augment_on_device=True)`), or "
                "give the dataset a `MultiCropTransform` to make the views in the DataLoader workers."
            )
        inputs = dict(inputs)
        images, image_sizes = inputs.pop("images", None), inputs.pop("image_sizes", None)
        encoded = inputs.pop(JPEG_BYTES_KEY, None)
        if encoded:
            images, image_sizes = self._decode_on_device(inputs, images, image_sizes, encoded)
        step = self.state.global_step
        if self.model.training:  # micro-batches of one step (gradient accumulation) draw different views
            self._view_micro_step = self._view_micro_step + 1 if step == self._view_step else 0
            self._view_step = step
            micro_step = self._view_micro_step
        else:  # evaluation: its own stream, leaving the training views of this step as they would be without it
            micro_step = 2**32
        generator = view_generator(self.args.seed, step, self.args.process_index, micro_step)
        inputs.update(self.device_views(images, image_sizes, generator))
        return inputs

    def _decode_on_device(
        self, inputs: dict[str, Any], images: torch.Tensor | None, image_sizes: torch.Tensor | None, encoded: list
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The canvas with the batch's JPEGs decoded on the device appended (`append_device_decoded`); the failed
        ones leave `inputs["labels"]` and join `inputs["num_skipped"]`."""
        device = self.args.device
        images, image_sizes, failed = append_device_decoded(images, image_sizes, encoded, self._device_resize, device)
        if failed:
            if "labels" in inputs:  # the workers' images first, then the JPEGs
                labels = inputs["labels"]
                failed_rows = {len(labels) - len(encoded) + index for index in failed}
                rows = torch.tensor([row for row in range(len(labels)) if row not in failed_rows], dtype=torch.long)
                inputs["labels"] = labels[_to_device(rows, labels.device)]
            inputs["num_skipped"] = inputs.get("num_skipped", 0) + len(failed)
        if images is None:
            raise RuntimeError(
                f"Every image of this batch ({len(encoded)} JPEGs) failed to decode on {device}, so there is nothing "
                "to train on. Check the data, or decode in the DataLoader workers (`--decode_on_device False`)."
            )
        return images, image_sizes

    def _view_shapes(self, inputs: dict[str, Any]) -> tuple[int, list[tuple[int, ...]]] | None:
        """Images and `(V, C, H, W)` of each resolution's views, from a batch of views or of `uint8` images."""
        if "pixel_values" in inputs:
            shapes = [tuple(inputs["pixel_values"].shape[1:])]
            if inputs.get("local_pixel_values") is not None:
                shapes.append(tuple(inputs["local_pixel_values"].shape[1:]))
            return inputs["pixel_values"].shape[0], shapes
        if ("images" in inputs or JPEG_BYTES_KEY in inputs) and self.device_views is not None:
            c = self.device_views.config
            shapes = [(c.num_global_views, c.num_channels, c.global_image_size, c.global_image_size)]
            if c.num_local_views > 0:
                shapes.append((c.num_local_views, c.num_channels, c.local_image_size, c.local_image_size))
            count = inputs["images"].shape[0] if "images" in inputs else 0
            return count + len(inputs.get(JPEG_BYTES_KEY) or []), shapes
        return None

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """
        Training FLOPs of a batch (3 x forward) with every view at its own resolution: backbone and projector counted
        once per view shape on the meta device (`trainer.throughput.TrainingFlops`), plus SIGReg's projections.
        Falls back to Trainer's count for models that cannot be counted that way.
        """
        shapes = self._view_shapes(inputs)
        per_image = self._training_flops.per_image(shapes[1]) if shapes is not None else None
        if per_image is None:
            return super().floating_point_ops(inputs)
        return int(per_image * shapes[0])

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        """
        `Trainer.get_batch_samples`; for a stream, the first call of each `train()` also checks, on all processes
        together (one `all_gather_object`), that every process got its batches: otherwise every process raises a
        `NoTrainingDataError` naming the processes without data and the fix, instead of one process leaving the
        training loop while the others wait for it in the next collective. Later steps need no check, as each process
        repeats its own shards (see the class docstring).
        """
        if self._data_checked or not isinstance(self.train_dataset, datasets.IterableDataset):
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        self._data_checked = True
        world_size = self.accelerator.num_processes
        error: Exception | None = None
        try:
            batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        except Exception as caught:  # shared with the other processes below, then raised here
            if world_size == 1 or self.accelerator.dataloader_config.dispatch_batches is not False:
                raise  # alone, or process 0 reads for all and the others wait for its broadcast
            error, batch_samples, num_items_in_batch = caught, [], None
        report = (len(batch_samples), None if error is None else f"{type(error).__name__}: {error}")
        reports = gather_object([report]) if world_size > 1 else [report]
        empty = [(rank, message) for rank, (count, message) in enumerate(reports) if count == 0]
        if empty:
            raise NoTrainingDataError(self._no_data_message(empty)) from error
        return batch_samples, num_items_in_batch

    def _no_data_message(self, empty: list[tuple[int, str | None]]) -> str:
        """What went wrong on each process of `empty` (`(process index, its error or None)`), and the fix."""
        world_size = self.accelerator.num_processes
        num_shards = self.train_dataset.num_shards
        lines = []
        for rank, message in empty:
            if world_size == 1:
                where = f"the stream ({num_shards} shard(s))"
            elif num_shards >= world_size:  # Accelerate gives each process its own shards
                own = self.train_dataset.shard(num_shards=world_size, index=rank).num_shards
                where = f"its {own} shard(s) of the stream's {num_shards}"
            else:
                where = f"the stream ({num_shards} shard(s), read whole by every process)"
            cause = f"reading its data raised {message}" if message else f"no usable image in {where}"
            lines.append(f"process {rank} of {world_size}: {cause}")
        if world_size == 1:
            fix = "Check the data files and `--image_column_name`"
        else:
            fix = (
                f"Every process needs images at every step. Give the stream at least {world_size} shards that hold "
                "usable images (for example split the data into more parquet files or .tar shards of similar sizes), "
                "or train on fewer processes"
            )
        return (
            f"No training data on {len(empty)} of {world_size} process(es): {'; '.join(lines)}. {fix}; for images "
            "that failed to decode, see the skipped-image warnings above."
        )

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
        saved_buffers = None
        if self.on_nonfinite_loss == "skip" and model.training:  # BatchNorm statistics, restored on a skipped step
            saved_buffers = [(buffer, buffer.detach().clone()) for buffer in self.model.buffers()]
        outputs = model(
            pixel_values=inputs["pixel_values"],
            local_pixel_values=inputs.get("local_pixel_values"),
            step=torch.tensor(self.state.global_step),  # a tensor: no recompilation per step under torch.compile
        )
        loss = outputs.loss
        if model.training:  # images/s and MFU of the logging window
            batch_size, shapes = self._view_shapes(inputs)
            self._window_images += batch_size
            self._window_flops += (self._training_flops.per_image(shapes) or 0.0) * batch_size
        if not torch.isfinite(loss):  # the one host sync of the step (Trainer checks its loss for NaN too)
            if saved_buffers is not None:
                with torch.no_grad():
                    for buffer, saved in saved_buffers:
                        buffer.copy_(saved)
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
        self._microstep_skipped = False
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._microstep_skipped:  # Trainer's `logging_nan_inf_filter` keeps it out of the logged mean loss
            loss = torch.full_like(loss, float("nan"))
        if self.probe is not None and self.accelerator.num_processes > 1:
            # The probe is not wrapped by DDP: average its gradients ourselves so every process keeps the same probe.
            for parameter in self.probe.parameters():
                if parameter.grad is not None:
                    parameter.grad.copy_(self.accelerator.reduce(parameter.grad, "mean"))
        return loss

    def _get_grad_norm(self, model: nn.Module, grad_norm: torch.Tensor | float | None = None) -> torch.Tensor | float:
        # The gradient norm Trainer computes before every optimizer step (for clipping and logging): a finite loss can
        # still give non-finite gradients (an overflow in the backward pass), which `on_nonfinite_loss` handles too.
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            if self.on_nonfinite_loss == "raise":
                raise NonFiniteLossError(
                    f"Non-finite gradients at step {self.state.global_step} (gradient norm {float(grad_norm)}) with a "
                    "finite loss. Lower the learning rate, try float32 or bf16 instead of fp16, or pass "
                    "`on_nonfinite_loss='skip'` (`--on_nonfinite_loss skip`) to skip such steps."
                )
            if not self._skip_optimizer_step:  # not already skipped for a non-finite loss
                self.nonfinite_steps += 1
                self._skip_optimizer_step = True
                logger.warning(
                    f"Skipping step {self.state.global_step}: non-finite gradient norm {float(grad_norm)} with a "
                    f"finite loss (skipped so far: {self.nonfinite_steps})."
                )
        return grad_norm

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
        if self.model.training:
            self._skip_optimizer_step = self._microstep_skipped = True
        logger.warning(
            f"Skipping step {self.state.global_step}: non-finite {bad} (skipped so far: {self.nonfinite_steps})."
        )
        # A zero loss connected to the graph, so that DDP still sees every parameter; the optimizer step is skipped.
        loss = sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)
        return (loss, outputs) if return_outputs else loss

    # -------------------------------------------------------------------------------------------------- evaluation
    def get_eval_dataloader(self, eval_dataset: str | Any | None = None) -> DataLoader:
        """
        The evaluation DataLoader of this process: its share of each block of `eval_batch_size * world_size`
        consecutive validation images (see `trainer.validation.validation_batches`), not sharded again by Accelerate.
        """
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return validation_dataloader(dataset, self.args, self.data_collator)

    def evaluation_loop(
        self,
        dataloader: DataLoader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """The validation loss on fixed views and directions, in eval mode (see the class docstring)."""
        model = self.model_wrapped if self.is_fsdp_enabled or self.is_deepspeed_enabled else self.model
        was_training = model.training
        model.eval()
        if self.accelerator.num_processes > 1 and not self.is_fsdp_enabled:
            broadcast_buffers(self.model)  # BatchNorm statistics of process 0
        self.callback_handler.eval_dataloader = dataloader
        # sums over this process's images of the loss, its two terms and 1
        totals = torch.zeros(4, dtype=torch.float64, device=self.args.device)
        with torch.no_grad():
            for inputs in dataloader:
                inputs = self._prepare_inputs(inputs)
                with self.autocast_smart_context_manager():
                    outputs = model(
                        pixel_values=inputs["pixel_values"],
                        local_pixel_values=inputs.get("local_pixel_values"),
                        step=EVAL_SIGREG_SEED,
                    )
                totals += weighted_loss_terms(outputs, inputs["pixel_values"].shape[0])
                self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, "sum")
        metrics, count = validation_metrics(totals, metric_key_prefix)
        if self.eval_embedding_metrics is not None:
            extra = self.eval_embedding_metrics(self.accelerator.unwrap_model(self.model))
            metrics.update({f"{metric_key_prefix}_{name}": value for name, value in extra.items()})
        model.train(was_training)
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=count)

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
            self._log_throughput(logs)
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

    def _log_throughput(self, logs: dict[str, float]) -> None:
        """`images_per_second` of all processes since the last log and, on a GPU of known peak, `mfu`."""
        now = time.perf_counter()
        elapsed, self._window_start = now - self._window_start, now
        totals = torch.tensor([self._window_images, self._window_flops], dtype=torch.float64, device=self.args.device)
        self._window_images, self._window_flops = 0, 0.0
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, "sum")
        images, flops = totals.tolist()
        if elapsed > 0 and images > 0:
            logs["images_per_second"] = round(images / elapsed, 2)
            peak = peak_flops(self.args.device)
            if peak is not None and flops > 0:
                logs["mfu"] = round(flops / elapsed / (peak * self.accelerator.num_processes), 4)

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
            training_args=self.args.to_dict() | {"world_size": self.args.world_size, "launch": self.launch_summary},
            log_history=self.state.log_history,
            dataset_names=dataset or dataset_tags,
            base_model=finetuned_from,
            license=license or "apache-2.0",
            model_id=self.hub_model_id or model_name,
        )

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Trainer pickles the training arguments next to the model (`training_args.bin`); the Hub flags pickles, so
        # the final folder and every checkpoint carry them as JSON instead.
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            write_training_args(self.args, output_dir if output_dir is not None else self.args.output_dir)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """An intermediate push with the model's code, card and JSON training arguments (`trainer.hub`)."""
        push_from_checkpoint(self, checkpoint_folder)
