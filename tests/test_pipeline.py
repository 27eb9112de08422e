"""The `image-feature-extraction` pipeline on a saved LeJEPA checkpoint, loaded where this package is absent."""

import textwrap

import numpy as np
import torch
from conftest import run_without_package
from PIL import Image
from transformers import ViTImageProcessor

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining


def test_feature_extraction_pipeline_pooled_and_unpooled(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    model = LeJepaForPreTraining(LeJepaConfig.from_preset("vit-tiny-test")).eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                                  image_std=[0.229, 0.224, 0.225])
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    with torch.no_grad():
        outputs = model.lejepa(**processor(Image.open(tmp_path / "image.png"), return_tensors="pt"))

    script = textwrap.dedent(
        f"""
        import numpy as np
        from PIL import Image
        from transformers import pipeline
        extractor = pipeline("image-feature-extraction", model={str(checkpoint)!r}, trust_remote_code=True)
        image = Image.open({str(tmp_path / "image.png")!r})
        np.save({str(tmp_path / "pooled.npy")!r}, np.asarray(extractor(image, pool=True)))
        np.save({str(tmp_path / "unpooled.npy")!r}, np.asarray(extractor(image)))
        """
    )
    run_without_package(script, cwd=tmp_path)
    pooled, unpooled = np.load(tmp_path / "pooled.npy"), np.load(tmp_path / "unpooled.npy")
    np.testing.assert_allclose(pooled.reshape(1, -1), outputs.pooler_output.numpy(), rtol=1e-5, atol=1e-6)
    assert unpooled.shape == (1, 17, 32)  # CLS + 4 x 4 patches of 8 px
    np.testing.assert_allclose(unpooled, outputs.last_hidden_state.numpy(), rtol=1e-5, atol=1e-6)
