"""
The project's `evaluate` module, `frozen_embedding_eval`: a self-contained folder that `evaluate.load` reads offline
and that can be pushed to the Hub unchanged. The evaluation library computes through it.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

import evaluate

FROZEN_EMBEDDING_EVAL_PATH = Path(__file__).resolve().parent / "frozen_embedding_eval"


def load_frozen_embedding_eval(**kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` of the frozen-embedding module (k-NN, linear probe, effective rank, Epps-Pulley); `kwargs`
    (e.g. `num_process`, `process_id`, `experiment_id`) go to `evaluate.load`."""
    return evaluate.load(str(FROZEN_EMBEDDING_EVAL_PATH), **kwargs)


@functools.cache
def frozen_embedding_protocol() -> ModuleType:
    """The module's Python file, imported once: its functions (`knn_predict`, `linear_probe_predict`,
    `effective_rank`, `epps_pulley`) are the one implementation of the protocol."""
    path = FROZEN_EMBEDDING_EVAL_PATH / "frozen_embedding_eval.py"
    spec = importlib.util.spec_from_file_location("lejepa_frozen_embedding_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


__all__ = ["FROZEN_EMBEDDING_EVAL_PATH", "frozen_embedding_protocol", "load_frozen_embedding_eval"]
