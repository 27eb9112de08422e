"""
Worker for tests/test_dependencies.py: runs as a base install (`pip install .`, no extra) would, with the packages of
the extras (scikit-learn, matplotlib, torchdata, scikit-image, and the test-only scipy and timm) unimportable, and
prints one JSON line of what worked and of the errors that name the missing extra.

Usage: python base_install_worker.py
"""

import importlib.abc
import importlib.metadata
import importlib.util
import json
import os
import sys

MISSING = {"sklearn", "matplotlib", "torchdata", "skimage", "scipy", "timm", "threadpoolctl"}
MISSING_DISTRIBUTIONS = {"scikit-learn", "matplotlib", "torchdata", "scikit-image", "scipy", "timm", "threadpoolctl"}
_find_spec, _version = importlib.util.find_spec, importlib.metadata.version


def find_spec(name, package=None):  # what libraries ask before an optional import (transformers' `is_*_available`)
    return None if name.split(".")[0] in MISSING else _find_spec(name, package)


def version(name):  # what accelerate asks for torchdata
    if name in MISSING_DISTRIBUTIONS:
        raise importlib.metadata.PackageNotFoundError(name)
    return _version(name)


class _Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


importlib.util.find_spec, importlib.metadata.version = find_spec, version
sys.meta_path.insert(0, _Missing())
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from transformers import AutoModel, TrainingArguments  # noqa: E402

import modeling_lejepa  # noqa: E402
import trainer  # noqa: E402, F401
import trainer.hub  # noqa: E402, F401
import trainer.recipes  # noqa: E402, F401
import trainer.validation  # noqa: E402, F401
from trainer.callbacks import stream_state_callback  # noqa: E402
from trainer.metrics import frozen_embedding_protocol  # noqa: E402

report = {}
model = AutoModel.from_config(modeling_lejepa.LeJepaConfig.from_preset("vit-tiny-test"))
report["auto_model"] = type(model).__name__
args = TrainingArguments(output_dir="unused", use_cpu=True, dataloader_num_workers=0, report_to="none")
report["stream_state_callback"] = repr(stream_state_callback(Accelerator(cpu=True), args))
import model_cards  # noqa: E402
import trainer.cli  # noqa: E402, F401  (the console commands lejepa-evaluate and lejepa-export-backbone)
import trainer.evaluation  # noqa: E402, F401
import trainer.export  # noqa: E402, F401

report["commands"] = "imported"
try:
    model_cards.plot_embedding_spectrum(np.eye(4), "unused.png")
except ImportError as error:
    report["plot"] = str(error)
try:
    rng = np.random.default_rng(0)
    protocol = frozen_embedding_protocol()
    protocol.linear_probe_predict(rng.normal(size=(8, 3)), np.arange(8) % 2, rng.normal(size=(2, 3)))
except ImportError as error:
    report["linear_probe"] = str(error)
report["loaded"] = sorted({name.split(".")[0] for name in sys.modules} & MISSING)
print(json.dumps(report))
