"""
Callbacks and helpers that make a LeJEPA run survive interruptions.

- `GracefulShutdownCallback`: on SIGTERM (what Slurm, Kubernetes and most schedulers send before killing a job) the
  run finishes its current optimizer step, saves a checkpoint and stops; the same command then resumes from it.
- `StreamStateCallback`: for streamed datasets, saves the position in the stream (the `state_dict()` of
  `torchdata`'s `StatefulDataLoader`, which holds `datasets.IterableDataset.state_dict()`) inside each checkpoint,
  so that a resumed run continues from there instead of re-reading and re-decoding every example already seen.
- `is_complete_checkpoint` / `get_last_complete_checkpoint`: a checkpoint folder counts only once its
  `trainer_state.json`, the last file `Trainer` writes, is there and parses, so that a run killed while saving
  resumes from the previous checkpoint rather than from a half-written one.

`LeJepaTrainer` installs them itself (see its `save_on_sigterm` argument; the stream one for streams read with
`dataloader_num_workers=0` when torchdata is installed). They work with any `transformers.Trainer`, which then
needs `resume_from_checkpoint=get_last_complete_checkpoint(output_dir)` and, for exact stream resumption,
`use_stateful_dataloader` and `ignore_data_skip` set as `LeJepaTrainer.train` does.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object, is_torchdata_stateful_dataloader_available
from transformers import TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Written by transformers' own SIGTERM checkpointing (`enable_jit_checkpoint`) while it saves, removed when done.
_JIT_SENTINEL_NAME = "checkpoint-is-incomplete.txt"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


# ----------------------------------------------------------------------------------------------------------------
# Complete checkpoints
# ----------------------------------------------------------------------------------------------------------------


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """
    Whether a `Trainer` checkpoint folder was written to the end.

    `Trainer._save_checkpoint` (transformers 5.x) writes into `checkpoint-N` directly, in this order: the model
    (`model.safetensors`, config, remote code), `optimizer.pt`, `scheduler.pt`, the grad scaler, `rng_state*.pth`,
    then `trainer_state.json`. A process killed part-way leaves a folder without a `trainer_state.json` (or with a
    truncated one), which `transformers.trainer_utils.get_last_checkpoint` would still pick. A folder counts as
    complete when its `trainer_state.json` parses and transformers' own in-progress marker
    (`checkpoint-is-incomplete.txt`, from `enable_jit_checkpoint`) is absent.

    This protects against a killed process, not against a machine crash that loses unsynced file data.
    """
    return _load_trainer_state(folder) is not None


def _load_trainer_state(folder: str | os.PathLike) -> TrainerState | None:
    """The checkpoint's `TrainerState`, or `None` when it is incomplete (see `is_complete_checkpoint`)."""
    folder = os.fspath(folder)
    if os.path.exists(os.path.join(folder, _JIT_SENTINEL_NAME)):
        return None
    try:
        return TrainerState.load_from_json(os.path.join(folder, TRAINER_STATE_NAME))
    except (OSError, ValueError, TypeError):
        return None


def get_last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """
    The `checkpoint-N` folder of `output_dir` with the largest `N` among the complete ones (see
    `is_complete_checkpoint`), or `None`. Incomplete folders are skipped with a warning and left in place: the
    resumed run writes the same step's checkpoint again, and `save_total_limit` rotation removes stale ones.
    """
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps.append((int(match.group(1)), name))
    for _, name in sorted(steps, reverse=True):
        path = os.path.join(output_dir, name)
        if is_complete_checkpoint(path):
            return path
        logger.warning(
            f"Ignoring the incomplete checkpoint {path} (no readable {TRAINER_STATE_NAME}: the run was probably "
            "killed while saving it)."
        )
    return None


# ----------------------------------------------------------------------------------------------------------------
# SIGTERM: save and stop
# ----------------------------------------------------------------------------------------------------------------


def _any_process(flag: bool, device: torch.device | str) -> bool:
    """`flag` or-ed over all processes (itself when not distributed)."""
    if PartialState().num_processes == 1:
        return flag
    return any(gather_object([flag]))


class GracefulShutdownCallback(TrainerCallback):
    """
    Turns SIGTERM into "save a checkpoint and stop" at the end of the current optimizer step.

    The handler is installed when training begins (on the main thread only) and removed when it ends. The first
    signal only sets a flag; at the next step end the callback sets `control.should_save` and
    `control.should_training_stop`, so `Trainer` writes `checkpoint-{global_step}` the normal way and leaves its loop.
    With several processes the flag is or-ed over all of them at every step (one tiny all-reduce), so they all save
    and stop at the same step even when the signal reaches them at different times. A second signal gets the previous
    handler back (by default: terminate at once), for when saving takes too long. Give the scheduler a grace period
    (Slurm `--signal=TERM@120`, Kubernetes `terminationGracePeriodSeconds`) longer than one optimizer step plus one
    checkpoint save. SIGKILL cannot be caught: then the run resumes from the last complete checkpoint.

    Args:
        signals (`tuple[int, ...]`, *optional*, defaults to `(signal.SIGTERM,)`): the signals to handle.

    Attributes:
        received_signal (`int` or `None`): the signal received, if any.
        stopped_by_signal (`int` or `None`): the signal on which training was stopped (after the checkpoint).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = tuple(signals)
        self.received_signal: int | None = None
        self.stopped_by_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        # Runs between two bytecodes of the main thread: only set a flag; logging happens at the step end.
        if self.received_signal is None:
            self.received_signal = signum
        self.restore_handlers()  # a second signal gets the previous behaviour (by default: terminate)

    def restore_handlers(self) -> None:
        """Puts back the handlers that were there before training began (also called when `train()` raises)."""
        for signum, handler in self._previous_handlers.items():
            try:
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError):  # not the main thread
                pass
        self._previous_handlers = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.received_signal = None
        self.stopped_by_signal = None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("Training runs outside the main thread: SIGTERM will not save a checkpoint.")
            return
        for signum in self.signals:
            self._previous_handlers[signum] = signal.signal(signum, self._handle)

    def _check(self, args, state, control) -> None:
        if self.stopped_by_signal is not None:
            return
        if _any_process(self.received_signal is not None, args.device):
            self.stopped_by_signal = self.received_signal or signal.SIGTERM
            control.should_save = True
            control.should_training_stop = True
            logger.warning(
                f"Received {signal.Signals(self.stopped_by_signal).name}: saving checkpoint-{state.global_step} in "
                f"{args.output_dir} and stopping. Run the same command again to resume from it."
            )

    def on_step_end(self, args, state, control, **kwargs):
        self._check(args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._check(args, state, control)

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_handlers()


# ----------------------------------------------------------------------------------------------------------------
# Stream position in checkpoints
# ----------------------------------------------------------------------------------------------------------------


class StreamStateCallback(TrainerCallback, ExportableState):
    """
    Saves the position of every process in a streamed dataset with each checkpoint, and restores it on resume.

    Needs a DataLoader with `state_dict()`/`load_state_dict()`: Accelerate builds one from `torchdata`'s
    `StatefulDataLoader` when `accelerator.dataloader_config.use_stateful_dataloader` is set (`LeJepaTrainer` sets
    it for `datasets.IterableDataset`s when torchdata is installed and `dataloader_num_workers=0`). Its state holds
    the `datasets.IterableDataset.state_dict()`, recorded by Accelerate's wrapper before its one-batch look-ahead,
    so it matches the batches actually trained on. `StatefulDataLoader` also collects the states of DataLoader
    workers, but datasets 5.2 cannot load them back for a shuffled stream of several shards (it restores the state
    before splitting the shards between workers: IndexError), hence `LeJepaTrainer` keeps Trainer's default (re-read
    the stream up to the checkpoint: exact but slow) when `dataloader_num_workers > 0`.

    When a checkpoint is due (`control.should_save` at a step or epoch end), the callback gathers the DataLoader
    state of every process (an `all_gather_object`) and returns it from `state()`; `Trainer` writes it into the
    checkpoint's `trainer_state.json` (under `stateful_callbacks`), the file it writes last, so the position is
    saved together with the model, optimizer and scheduler or not at all. On resume, `LeJepaTrainer.train` reads it
    back, sets `ignore_data_skip` (no re-reading of the stream) and calls `load_pending`; the state is loaded into
    the DataLoader when training begins. Resuming with another number of processes falls back to `Trainer`'s
    default (re-iterating the stream to skip the batches already seen).

    What resuming repeats or skips: the examples that sat in `datasets`' shuffle buffers when the checkpoint was
    written are not saved and may be skipped (at most `shuffle_buffer_size` examples per process), and nothing is
    repeated. See `datasets.IterableDataset.state_dict`.
    """

    def __init__(self, data_states: list[Any] | None = None):
        self.data_states = data_states
        self._pending: Any = None

    def state(self) -> dict:
        return {"args": {}, "attributes": {"data_states": self.data_states}}

    def load_pending(self, data_state: Any) -> None:
        """Registers the DataLoader state of this process, to be loaded when training begins."""
        self._pending = data_state

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        name = type(self).__name__
        if state.stateful_callbacks is not None and name not in state.stateful_callbacks:
            # A checkpoint saved without this callback: Trainer's _save_checkpoint expects the key.
            state.stateful_callbacks[name] = self.state()
        if self._pending is None:
            return
        if train_dataloader is None or not hasattr(train_dataloader, "load_state_dict"):
            raise RuntimeError("The training DataLoader cannot load a saved stream position (no `load_state_dict`).")
        train_dataloader.load_state_dict(self._pending)
        logger.info(f"Resuming the stream from the position saved at step {state.global_step}.")
        self._pending = None

    def _capture(self, args, control, train_dataloader) -> None:
        if not control.should_save:
            return
        data_state = train_dataloader.state_dict() if hasattr(train_dataloader, "state_dict") else None
        states = gather_object([data_state]) if PartialState().num_processes > 1 else [data_state]
        self.data_states = None if all(s is None for s in states) else states

    def on_step_end(self, args, state, control, train_dataloader=None, **kwargs):
        self._capture(args, control, train_dataloader)

    def on_epoch_end(self, args, state, control, train_dataloader=None, **kwargs):
        self._capture(args, control, train_dataloader)


def stream_state_callback(accelerator: Accelerator, args: TrainingArguments) -> StreamStateCallback | None:
    """
    A `StreamStateCallback` for a streamed `datasets.IterableDataset` read by a Trainer with `accelerator` and
    `args`, with `accelerator`'s stateful DataLoader switched on, or `None` (logged) where the position cannot be
    saved: a resumed run then re-reads the stream up to its checkpoint (Trainer's default).

    Needs torchdata's `StatefulDataLoader` (torchdata 0.8, the version accelerate's
    `is_torchdata_stateful_dataloader_available` asks for; the `train` extra), Accelerate's `use_stateful_dataloader`
    and `datasets.IterableDataset.state_dict` (the lower bounds in setup.cfg), and `dataloader_num_workers=0`: datasets
    5.2 (the latest version checked) restores a shuffled multi-shard stream's state before splitting its shards
    between DataLoader workers, and fails (IndexError in `_inner_load_state_dict`).
    """
    if not is_torchdata_stateful_dataloader_available():
        reason = "torchdata is not installed (`pip install lejepa-hf[train]` saves the stream position instead)"
    elif args.dataloader_num_workers > 0:
        reason = "the stream position is only saved with `dataloader_num_workers=0`"
    else:
        # Accelerate then wraps torchdata's StatefulDataLoader and records its state before its look-ahead.
        accelerator.dataloader_config.use_stateful_dataloader = True
        return StreamStateCallback()
    logger.info(f"A resumed run will re-read the stream up to its checkpoint (Trainer's default), as {reason}.")
    return None


def read_stream_states(checkpoint: str | os.PathLike) -> list[Any] | None:
    """The per-process DataLoader states a `StreamStateCallback` saved in `checkpoint`, or `None`."""
    state = _load_trainer_state(checkpoint)
    if state is None:
        return None
    stored = (state.stateful_callbacks or {}).get(StreamStateCallback.__name__)
    if isinstance(stored, list):
        stored = stored[0] if stored else None
    if not isinstance(stored, dict):
        return None
    return (stored.get("attributes") or {}).get("data_states")


__all__ = [
    "GracefulShutdownCallback",
    "StreamStateCallback",
    "get_last_complete_checkpoint",
    "is_complete_checkpoint",
    "read_stream_states",
    "stream_state_callback",
]
