"""Test settings: offline Hub, a throwaway HF_HOME, and small helpers shared by the tests."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="lejepa-hf-home-"))
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Prepended to code run by `run_without_package`: makes this project's packages unimportable, as for a user who
# only has the checkpoint folder (an editable install would otherwise make them importable from anywhere).
_BLOCK_PROJECT_IMPORTS = '''
import importlib.abc, sys
class _BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"modeling_lejepa", "trainer", "model_cards"}:
            raise ImportError(f"{name} is not installed for this test")
        return None
sys.meta_path.insert(0, _BlockProject())
try:
    import modeling_lejepa
    raise AssertionError("modeling_lejepa must not be importable here")
except ImportError:
    pass
'''


def run_without_package(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh Python process where this project cannot be imported, offline, with a fresh HF_HOME."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(Path(cwd) / "fresh_hf_home"))
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_PROJECT_IMPORTS + code], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"fresh process failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result
