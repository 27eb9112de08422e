"""What a base install (`pip install .`, no extra) can do: load the model with `AutoModel` and import the `trainer`
library without scikit-learn, matplotlib or torchdata; each feature that needs one of them names its extra."""

import configparser
import json
import subprocess
import sys

from conftest import REPO_ROOT


def test_base_install_imports_and_names_the_missing_extras():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "base_install_worker.py")],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["auto_model"] == "LeJepaModel"
    assert report["loaded"] == []  # none of the extras' packages was imported
    assert report["stream_state_callback"] == "None"  # no stream position without torchdata, and no error
    assert report["commands"] == "imported"  # the evaluation and export library and commands import without extras
    assert "matplotlib" in report["plot"] and "lejepa-hf[train]" in report["plot"]  # drawing names the extra
    assert "scikit-learn" in report["linear_probe"] and "lejepa-hf[eval]" in report["linear_probe"]


def test_setup_cfg_declares_the_imports_and_keeps_the_extras_out_of_the_base():
    config = configparser.ConfigParser()
    config.read(REPO_ROOT / "setup.cfg")

    def names(value: str) -> set[str]:
        lines = [line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")]
        return {line.split(">")[0].split("=")[0].split("[")[0].lower() for line in lines}

    base = names(config["options"]["install_requires"])
    extras = {name: names(value) for name, value in config["options.extras_require"].items()}
    assert "jinja2" in base  # model_cards/card.py
    assert not base & {"scikit-learn", "matplotlib", "torchdata", "scikit-image"}
    assert {"torchdata", "matplotlib", "scikit-image", "scikit-learn"} <= extras["train"]
    assert {"scikit-learn", "matplotlib"} <= extras["eval"]
    assert extras["train"] | extras["eval"] <= extras["dev"]  # the README's commands install `.[dev]`
