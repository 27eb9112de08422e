"""What `--push_to_hub` would upload, with the Hub client's network calls replaced by a recorder."""

import json
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from transformers import TrainingArguments, ViTImageProcessor

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from trainer import LeJepaTrainer

CODE_FILES = {"configuration_lejepa.py", "modeling_lejepa.py", "sigreg.py", "ecf.py"}


class RecordingHfApi:
    """Stands in for `HfApi`: records the files each `upload_folder` call would send, sends nothing."""

    def __init__(self):
        self.uploads: list[dict] = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, ignore_patterns=None, **kwargs):
        files = sorted(
            filter_repo_objects(
                [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()],
                ignore_patterns=ignore_patterns,
            )
        )
        self.uploads.append({"path_in_repo": path_in_repo, "files": files, "card": _read(Path(folder_path))})
        future = Future()
        future.set_result(None)
        return future


def _read(folder: Path) -> str | None:
    return (folder / "README.md").read_text() if (folder / "README.md").is_file() else None


def views(batch):
    generator = torch.Generator().manual_seed(len(batch["index"]))
    return {
        "pixel_values": [torch.randn(2, 3, 32, 32, generator=generator) for _ in batch["index"]],
        "local_pixel_values": [torch.randn(2, 3, 16, 16, generator=generator) for _ in batch["index"]],
    }


def collate(examples):
    return {key: torch.stack([e[key] for e in examples]) for key in ("pixel_values", "local_pixel_values")}


def test_push_uploads_code_weights_and_our_card(tmp_path, monkeypatch):
    api = RecordingHfApi()
    monkeypatch.setattr("transformers.trainer.hf_api", lambda: api)
    config = LeJepaConfig.from_preset("vit-tiny-test", num_local_views=2)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), use_cpu=True, max_steps=4, per_device_train_batch_size=8, save_steps=2,
        logging_steps=1, report_to="none", remove_unused_columns=False, push_to_hub=True,
        hub_model_id="org/lejepa-test", hub_strategy="every_save", dataloader_num_workers=0,
    )
    dataset = Dataset.from_dict({"index": list(range(32))}).with_transform(views)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    trainer = LeJepaTrainer(model=LeJepaForPreTraining(config), args=args, train_dataset=dataset,
                            data_collator=collate, processing_class=processor)
    trainer.train()
    trainer.push_to_hub(dataset="org/images")
    trainer._finish_current_push()

    assert len(api.uploads) >= 3  # two intermediate pushes (every save) and the final one
    for upload in api.uploads:
        files = set(upload["files"])
        assert CODE_FILES <= files, f"custom code missing from a push: {sorted(files)}"
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= files
        assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle")) for f in files), sorted(files)
        assert "training_args.json" in files
        assert not any(f.startswith("checkpoint-") for f in files)
        assert "library_name: transformers" in upload["card"] and "lejepa" in upload["card"]
    final = api.uploads[-1]
    assert "loss_curves.png" in final["files"]
    # the training arguments, as JSON (read back by `json`), in the folder and in every checkpoint; no pickle but the
    # states that resuming needs, which stay in the local checkpoints
    out = tmp_path / "out"
    assert json.loads((out / "training_args.json").read_text()) == json.loads(args.to_json_string())
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in out.iterdir())
    for checkpoint in ("checkpoint-2", "checkpoint-4"):
        folder = out / checkpoint
        assert json.loads((folder / "training_args.json").read_text())["hub_strategy"] == "every_save"
        pickles = {p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")}
        assert pickles == {"optimizer.pt", "scheduler.pt", "rng_state.pth"}, pickles
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction"
    assert "org/images" in card.data.datasets
    assert "trust_remote_code=True" in card.text


@pytest.mark.parametrize("strategy", ["checkpoint", "all_checkpoints"])
def test_checkpoint_hub_strategies_are_refused(tmp_path, strategy):
    """They would upload the optimizer, scheduler and RNG pickles of the checkpoints."""
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", push_to_hub=True,
                             hub_model_id="org/lejepa-test", hub_strategy=strategy)
    with pytest.raises(ValueError, match="every_save"):
        LeJepaTrainer(model=LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test")), args=args)
