"""13-band uint16 tiles end to end, as a satellite user runs them: a folder of TIFFs (views on the device, with a
validation loss) and a streamed parquet of the same tiles as arrays (views in the workers) train on 2 CPU processes
(`accelerate launch`), the folder's run resumes, and its backbone, exported, embeds a tile with `AutoModel` and
`AutoImageProcessor` in a fresh process that cannot import this project."""

import json

import datasets
import numpy as np
import pytest
import tifffile
import torch
from conftest import REPO_ROOT, run_without_package
from test_launch import DDP_CPU, accelerate_launch
from transformers import AutoImageProcessor

from modeling_lejepa import LeJepaModel
from trainer.export import export_backbone

BANDS, SIZE, COUNT = 13, 48, 8


def tiles() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.integers(0, 3000, (SIZE, SIZE, BANDS)) + 1500 * np.arange(BANDS)).astype(np.uint16)
            for _ in range(COUNT)]


def pretraining(output_dir, *data_args: str, max_steps: int = 2) -> list[str]:
    return [
        str(REPO_ROOT / "run_pretraining.py"), *data_args, "--output_dir", str(output_dir), "--model_preset",
        "vit-tiny-test", "--max_steps", str(max_steps), "--save_steps", "2", "--per_device_train_batch_size", "4",
        "--dataloader_num_workers", "0", "--report_to", "none", "--logging_steps", "1", "--use_cpu",
    ]


def run(tmp_path, script: list[str]) -> str:
    result = accelerate_launch(DDP_CPU, script, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "2 processes" in output, output[-2000:]  # not two independent single-process runs
    return output


@pytest.mark.slow
def test_13_band_tiles_train_on_2_processes_resume_export_and_embed_anywhere(tmp_path):
    arrays = tiles()
    folder = tmp_path / "tiles"
    folder.mkdir()
    for index, array in enumerate(arrays):
        tifffile.imwrite(folder / f"tile{index}.tif", array)
    features = datasets.Features({"image": datasets.Array3D(shape=(SIZE, SIZE, BANDS), dtype="uint16")})
    for shard in range(2):  # one shard per process
        part = arrays[shard::2]
        datasets.Dataset.from_dict({"image": part}, features=features).to_parquet(tmp_path / f"tiles-{shard}.parquet")

    # The folder: 2 steps, then the same command to 4 steps resumes from checkpoint-2
    output_dir = tmp_path / "folder-run"
    folder_args = ["--train_dir", str(folder), "--validation_dir", str(folder), "--max_eval_samples", "4", "--do_eval"]
    run(tmp_path, pretraining(output_dir, *folder_args))
    resumed = run(tmp_path, pretraining(output_dir, *folder_args, max_steps=4))
    assert "Views made on the device" in resumed
    assert "Resuming from" in resumed and "checkpoint-2" in resumed
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert all(np.isfinite(entry["loss"]) for entry in state["log_history"] if "loss" in entry)
    assert np.isfinite(json.loads((output_dir / "eval_results.json").read_text())["eval_loss"])
    config = json.loads((output_dir / "config.json").read_text())
    assert config["backbone_config"]["num_channels"] == BANDS
    processor = json.loads((output_dir / "preprocessor_config.json").read_text())
    pixels = np.stack(arrays).reshape(-1, BANDS).astype(np.float64) / 65535  # every tile is in the sample
    np.testing.assert_allclose(processor["image_mean"], pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(processor["image_std"], pixels.std(axis=0), rtol=1e-6)
    card = (output_dir / "README.md").read_text()
    assert f"images of {BANDS} channel(s)" in card and "tifffile.imread" in card

    # The same tiles as arrays in a streamed parquet, views made by the DataLoader workers: the same statistics
    stream_dir = tmp_path / "stream-run"
    streamed = run(tmp_path, pretraining(stream_dir, "--data_files", *map(str, sorted(tmp_path.glob("*.parquet"))),
                                         "--streaming", "--augment_on_device", "false"))
    assert "Views made in the DataLoader workers" in streamed
    stream_processor = json.loads((stream_dir / "preprocessor_config.json").read_text())
    np.testing.assert_allclose(stream_processor["image_mean"], processor["image_mean"], rtol=1e-9)
    assert json.loads((stream_dir / "config.json").read_text())["backbone_config"]["num_channels"] == BANDS

    # Export, then embed a tile anywhere: AutoModel + AutoImageProcessor, no project code
    export_dir = export_backbone(output_dir, tmp_path / "export")
    tifffile.imwrite(tmp_path / "query.tif", arrays[0])
    run_without_package(
        "import numpy as np, tifffile, torch\n"
        "from transformers import AutoImageProcessor, AutoModel\n"
        "model = AutoModel.from_pretrained('export').eval()\n"
        "processor = AutoImageProcessor.from_pretrained('export')\n"
        "inputs = processor(images=tifffile.imread('query.tif'), input_data_format='channels_last',\n"
        "                   return_tensors='pt')\n"
        "with torch.no_grad():\n"
        "    np.save('embedding.npy', model(**inputs, interpolate_pos_encoding=True).pooler_output.numpy())\n",
        cwd=tmp_path,
    )
    model = LeJepaModel.from_pretrained(output_dir).eval()
    inputs = AutoImageProcessor.from_pretrained(export_dir)(
        images=np.moveaxis(arrays[0], -1, 0), input_data_format="channels_first", return_tensors="pt"
    )
    assert inputs["pixel_values"].shape == (1, BANDS, 32, 32)
    with torch.no_grad():
        expected = model(**inputs).pooler_output.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "embedding.npy"), expected, rtol=1e-4, atol=1e-5)
