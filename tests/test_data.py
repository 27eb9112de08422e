"""Tests of trainer/data/: multi-crop views, RGB conversion, robust decoding, collation and dataset loading."""

import io
import tarfile
import warnings

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as tv_functional
from transformers import ViTImageProcessor

from modeling_lejepa import LeJepaConfig
from trainer.data import (
    BadSampleCounter,
    ImageDecodeError,
    MultiCropBatchTransform,
    MultiCropCollator,
    MultiCropConfig,
    MultiCropTransform,
    check_num_shards,
    decode_image,
    detect_image_column,
    detect_label_column,
    load_digits_dataset,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
    to_rgb_image,
)
from trainer.data.views import _SeparableGaussianBlur

TINY = {"global_image_size": 32, "local_image_size": 16}
PIL_MODES = ["L", "LA", "RGB", "RGBA", "CMYK", "P", "I;16", "I", "F"]


def natural_image(width=48, height=40, seed=0) -> PIL.Image.Image:
    """A smooth RGB gradient with noise: compresses like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    array = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    array = array + rng.normal(0, 10, array.shape)
    return PIL.Image.fromarray(array.clip(0, 255).astype(np.uint8))


def encode(image: PIL.Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The transform runs in DataLoader workers, which use one thread each; on a shared 2-core machine more threads
    only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    return encode(natural_image(64, 48), "JPEG")


@pytest.fixture(scope="module")
def bad_values(jpeg_bytes) -> dict:
    """One value per kind of failure the decoder must survive."""
    return {
        "corrupt": {"bytes": b"this is not an image" * 20, "path": None},
        "truncated": {"bytes": jpeg_bytes[: len(jpeg_bytes) // 2], "path": None},
        "empty": {"bytes": b"", "path": None},
        "int": 7,
        "string": "/no/such/image.jpg",
        "none": None,
        "list": [1, 2, 3],
    }


# ----------------------------------------------------------------------------------------------------------------
# Multi-crop transform
# ----------------------------------------------------------------------------------------------------------------


def test_default_views_follow_lejepa_recipe():
    config = MultiCropConfig()
    assert (config.num_global_views, config.num_local_views) == (2, 6)
    assert (config.global_image_size, config.local_image_size) == (224, 96)
    assert config.global_crop_scale == (0.3, 1.0) and config.local_crop_scale == (0.05, 0.3)
    views = MultiCropTransform()(natural_image(300, 200))
    assert views["pixel_values"].shape == (2, 3, 224, 224)
    assert views["local_pixel_values"].shape == (6, 3, 96, 96)
    assert views["pixel_values"].dtype == views["local_pixel_values"].dtype == torch.float32
    assert torch.isfinite(views["pixel_values"]).all() and torch.isfinite(views["local_pixel_values"]).all()
    # Independent crops: views differ from one another.
    assert not torch.equal(views["pixel_values"][0], views["pixel_values"][1])


def test_views_from_lejepa_config_and_overrides():
    config = LeJepaConfig.from_preset("vit-tiny-test")
    views = MultiCropTransform.from_lejepa_config(config)(natural_image())
    assert views["pixel_values"].shape == (2, 3, 32, 32)
    assert views["local_pixel_values"].shape == (6, 3, 16, 16)

    config = LeJepaConfig.from_preset("vit-tiny-test", num_global_views=3, num_local_views=0, global_image_size=24)
    transform = MultiCropTransform.from_lejepa_config(config, interpolation="bicubic", global_blur_prob=0.5)
    views = transform(natural_image())
    assert views["pixel_values"].shape == (3, 3, 24, 24)
    assert "local_pixel_values" not in views
    assert transform.config.global_blur_prob == 0.5

    with pytest.raises(TypeError, match="Unknown MultiCropConfig field"):
        MultiCropConfig.from_lejepa_config(config, not_a_field=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"global_crop_scale": (0.5, 0.2)}, "global_crop_scale"),
        ({"grayscale_prob": 1.5}, "grayscale_prob"),
        ({"global_blur_prob": (1.0, -0.1)}, r"global_blur_prob\[1\]"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"image_std": (0.2, 0.0, 0.2)}, "image_std"),
        ({"image_mean": (0.5, 0.5)}, "image_mean"),
        ({"blur_kernel_size": 4}, "blur_kernel_size"),
        ({"num_global_views": 0}, "num_global_views"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiCropConfig(**kwargs)


def test_view_geometry_is_defined_once_in_lejepa_config():
    """The numbers of views, sizes and crop scales: `LeJepaConfig`'s defaults (the paper's), and its checks."""
    paper = {"num_global_views": 2, "num_local_views": 6, "global_image_size": 224, "local_image_size": 96,
             "global_crop_scale": (0.3, 1.0), "local_crop_scale": (0.05, 0.3)}
    views, model = MultiCropConfig(), LeJepaConfig()
    assert {name: getattr(views, name) for name in paper} == paper
    assert {name: getattr(model, name) for name in paper} == paper
    for bad in ({"num_global_views": 0}, {"num_local_views": -1}, {"local_image_size": 0},
                {"global_crop_scale": (0.0, 1.0)}, {"local_crop_scale": (0.1, 0.2, 0.3)}):
        with pytest.raises(ValueError) as from_views:
            MultiCropConfig(**bad)
        with pytest.raises(ValueError) as from_model:
            LeJepaConfig(**bad)
        assert str(from_views.value) == str(from_model.value) and next(iter(bad)) in str(from_views.value)


def test_asymmetric_blur_and_solarize_per_global_view():
    transform = MultiCropTransform(num_global_views=3, **TINY)
    kinds = [[type(step).__name__ for step in pipeline.transforms] for pipeline in transform.global_views]
    blur_probs = [
        next(step.p for step in pipeline.transforms if isinstance(step, v2.RandomApply) and
             isinstance(step.transforms[0], _SeparableGaussianBlur))
        for pipeline in transform.global_views
    ]
    assert blur_probs == [1.0, 0.1, 1.0]  # cycles through global_blur_prob
    assert ["RandomSolarize" in names for names in kinds] == [False, True, False]
    local_names = [type(step).__name__ for step in transform.local_view.transforms]
    assert "RandomSolarize" not in local_names and "RandomResizedCrop" == local_names[0]


def test_normalisation_uses_image_processor_mean_and_std():
    processor = ViTImageProcessor(image_mean=[0.2, 0.4, 0.6], image_std=[0.1, 0.2, 0.3])
    no_augmentation = {
        "horizontal_flip_prob": 0.0, "color_jitter_prob": 0.0, "grayscale_prob": 0.0, "global_blur_prob": 0.0,
        "local_blur_prob": 0.0, "global_solarize_prob": 0.0, "global_crop_scale": (1.0, 1.0),
        "crop_ratio": (1.0, 1.0),
    }
    config = LeJepaConfig.from_preset("vit-tiny-test")
    transform = MultiCropTransform.from_lejepa_config(config, processor, **no_augmentation)
    assert transform.config.image_mean == (0.2, 0.4, 0.6) and transform.config.image_std == (0.1, 0.2, 0.3)

    color = (51, 102, 204)
    views = transform(PIL.Image.new("RGB", (32, 32), color))["pixel_values"]
    expected = (torch.tensor(color) / 255.0 - torch.tensor([0.2, 0.4, 0.6])) / torch.tensor([0.1, 0.2, 0.3])
    torch.testing.assert_close(views[:, :, 5, 7], expected.expand(2, 3), atol=1e-5, rtol=0)

    # The fused conversion equals ToDtype(float32, scale=True) + Normalize on a real image (full crop = identity).
    image = natural_image(32, 32)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.2, 0.4, 0.6], [0.1, 0.2, 0.3])])
    torch.testing.assert_close(
        transform(image)["pixel_values"][0], reference(tv_functional.pil_to_tensor(image)), atol=1e-5, rtol=0
    )

    # Without a processor (or with one lacking the attributes), ImageNet's statistics.
    assert MultiCropConfig.from_lejepa_config(config, object()).image_mean == pytest.approx((0.485, 0.456, 0.406))


def test_separable_blur_matches_torchvision():
    image = tv_functional.pil_to_tensor(natural_image(40, 36))
    blur = _SeparableGaussianBlur(13, (1.5, 1.5))
    params = blur.make_params([image])
    ours = blur.transform(image, params)
    reference = tv_functional.gaussian_blur(image, [13, 13], params["sigma"])
    assert ours.dtype == torch.uint8 and ours.shape == image.shape
    assert (ours.int() - reference.int()).abs().max() <= 1
    floats = image.float() / 255
    torch.testing.assert_close(
        blur.transform(floats, params), tv_functional.gaussian_blur(floats, [13, 13], params["sigma"]), atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize("mode", PIL_MODES)
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (37, 23)])
def test_every_pil_mode_and_tiny_images(mode, size):
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    views = MultiCropTransform(**TINY)(image)
    assert views["pixel_values"].shape == (2, 3, 32, 32)
    assert views["local_pixel_values"].shape == (6, 3, 16, 16)
    assert torch.isfinite(views["pixel_values"]).all()


def test_numpy_arrays_and_tensors_of_every_layout():
    transform = MultiCropTransform(num_local_views=1, **TINY)
    rng = np.random.default_rng(0)
    for array in [
        rng.integers(0, 256, (9, 7), dtype=np.uint8),
        rng.integers(0, 256, (9, 7, 1), dtype=np.uint8),
        rng.integers(0, 256, (9, 7, 3), dtype=np.uint8),
        rng.integers(0, 256, (9, 7, 4), dtype=np.uint8),
        rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16),
        rng.random((9, 7, 3)).astype(np.float32),
        rng.random((3, 9, 7)),  # channels first
        np.ones((1, 1), dtype=bool),
        torch.rand(3, 9, 7),
    ]:
        views = transform(array)
        assert views["pixel_values"].shape == (2, 3, 32, 32), type(array)
    with pytest.raises(ImageDecodeError, match="no pixels"):
        transform(np.zeros((0, 5, 3), dtype=np.uint8))
    with pytest.raises(ImageDecodeError, match="no pixels"):
        transform(PIL.Image.new("RGB", (0, 0)))
    with pytest.raises(ImageDecodeError, match="shape"):
        transform(np.zeros((5, 4, 6), dtype=np.uint8))


def test_high_bit_depth_is_rescaled_not_clipped():
    def pixel(image):
        return tuple(np.asarray(to_rgb_image(image))[0, 0])

    assert pixel(PIL.Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))) == (255, 255, 255)
    assert pixel(PIL.Image.new("I;16", (4, 4), 32768)) == (128, 128, 128)
    assert pixel(PIL.Image.new("I;16B", (4, 4), 1028)) == (4, 4, 4)
    assert pixel(PIL.Image.new("I", (4, 4), 65535)) == (255, 255, 255)
    assert pixel(PIL.Image.new("I", (4, 4), 200)) == (200, 200, 200)  # 8-bit values in a 32-bit image
    assert pixel(PIL.Image.new("F", (4, 4), 0.5)) == (128, 128, 128)
    wide = PIL.Image.fromarray(np.array([[0.0, 1000.0], [500.0, 250.0]], dtype=np.float32))
    assert np.asarray(to_rgb_image(wide))[..., 0].tolist() == [[0, 255], [128, 64]]
    negative = np.array([[-1000, 1000]], dtype=np.int32)
    assert np.asarray(to_rgb_image(negative))[..., 0].tolist() == [[0, 255]]
    with_nan = np.array([[0.0, np.nan, 0.5]], dtype=np.float64)
    assert np.asarray(to_rgb_image(with_nan))[..., 0].tolist() == [[0, 0, 128]]
    # A 16-bit PNG file round trip (PIL opens it as I;16).
    png = encode(PIL.Image.fromarray(np.full((3, 3), 40000, dtype=np.uint16)), "PNG")
    decoded = decode_image(png)
    assert decoded.mode.startswith("I;16") and pixel(decoded) == (156, 156, 156)


def test_transparency_is_composited_on_the_background():
    transparent = PIL.Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert tuple(np.asarray(to_rgb_image(transparent))[0, 0]) == (255, 255, 255)
    assert tuple(np.asarray(to_rgb_image(transparent, (10, 20, 30)))[0, 0]) == (10, 20, 30)
    half = PIL.Image.new("LA", (2, 2), (0, 128))
    assert np.asarray(to_rgb_image(half))[0, 0, 0] in (127, 128)
    palette = PIL.Image.new("P", (2, 2), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    assert tuple(np.asarray(to_rgb_image(palette))[0, 0]) == (255, 255, 255)
    cmyk = PIL.Image.new("CMYK", (2, 2), (0, 255, 255, 0))
    assert tuple(np.asarray(to_rgb_image(cmyk))[0, 0]) == (255, 0, 0)


# ----------------------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------------------


def test_decode_image_accepts_every_kind_of_good_value(tmp_path, jpeg_bytes):
    path = tmp_path / "image.jpg"
    path.write_bytes(jpeg_bytes)
    for value in [jpeg_bytes, {"bytes": jpeg_bytes, "path": "ignored.jpg"}, {"bytes": None, "path": str(path)},
                  str(path), path, natural_image(64, 48)]:
        image = decode_image(value)
        assert image.size == (64, 48)


def test_decode_image_applies_exif_orientation():
    exif = PIL.Image.Exif()
    exif[PIL.Image.ExifTags.Base.Orientation] = 6  # rotated 90 degrees
    buffer = io.BytesIO()
    natural_image(64, 48).save(buffer, format="JPEG", exif=exif)
    assert decode_image(buffer.getvalue()).size == (48, 64)


def test_decode_image_rejects_bad_values(bad_values, jpeg_bytes):
    kinds = {}
    for name, value in bad_values.items():
        with pytest.raises(ImageDecodeError) as error:
            decode_image(value)
        kinds[name] = error.value.kind
    assert kinds == {
        "corrupt": "unreadable", "truncated": "unreadable", "empty": "empty", "int": "wrong type",
        "string": "missing", "none": "missing", "list": "wrong type",
    }
    with pytest.raises(ImageDecodeError, match="(?i)truncated"):
        decode_image(bad_values["truncated"])
    # Decompression bombs: above max_image_pixels, without decoding the pixels and without PIL's warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageDecodeError, match="decompression bomb") as error:
            decode_image(jpeg_bytes, max_image_pixels=64 * 48 - 1)
    assert error.value.kind == "too large"
    assert decode_image(jpeg_bytes, max_image_pixels=64 * 48).size == (64, 48)
    assert PIL.ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_decode_image_treats_pil_decompression_bomb_error_as_bad(monkeypatch, jpeg_bytes):
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises above 2 * 100 pixels
    with pytest.raises(ImageDecodeError) as error:
        decode_image(jpeg_bytes, max_image_pixels=10**9)
    assert error.value.kind == "too large"


# ----------------------------------------------------------------------------------------------------------------
# Bad sample accounting, batch transform, collator
# ----------------------------------------------------------------------------------------------------------------


def test_batch_transform_skips_and_counts_bad_samples(bad_values, jpeg_bytes):
    counter = BadSampleCounter()
    transform = MultiCropBatchTransform(MultiCropTransform(**TINY), "image", "label", counter=counter)
    images = [{"bytes": jpeg_bytes, "path": None}, *bad_values.values(), jpeg_bytes]
    labels = [3] + [1] * len(bad_values) + [None]
    output = transform({"image": images, "label": labels, "other": [0] * len(images)})
    assert set(output) == {"pixel_values", "local_pixel_values", "labels"}
    assert all(len(column) == len(images) for column in output.values())
    good = [index for index, pixels in enumerate(output["pixel_values"]) if pixels is not None]
    assert good == [0, len(images) - 1]
    assert output["local_pixel_values"][1] is None and output["labels"][-1] == -100
    assert (counter.seen, counter.skipped) == (len(images), len(bad_values))
    assert counter.reasons == {"unreadable": 2, "empty": 1, "wrong type": 2, "missing": 2}

    collator = MultiCropCollator()
    rows = [{key: output[key][index] for key in output} for index in range(len(images))]
    batch = collator(rows + [None])
    assert batch["pixel_values"].shape == (2, 2, 3, 32, 32)
    assert batch["local_pixel_values"].shape == (2, 6, 3, 16, 16)
    assert batch["labels"].tolist() == [3, -100]
    assert collator.num_skipped == batch["num_skipped"].item() == len(bad_values) + 1

    dropping = MultiCropBatchTransform(MultiCropTransform(**TINY), "image", "label", drop_bad_samples=True)
    output = dropping({"image": images, "label": labels})
    assert len(output["pixel_values"]) == len(output["labels"]) == 2 and output["labels"] == [3, -100]

    with pytest.raises(KeyError, match="image_column_name"):
        transform({"img": images})


def test_max_bad_fraction_raises_a_clear_error(bad_values, jpeg_bytes):
    counter = BadSampleCounter(max_bad_fraction=0.1, min_samples=20)
    transform = MultiCropBatchTransform(MultiCropTransform(**TINY), "image", counter=counter)
    transform({"image": [jpeg_bytes] * 9 + [b"junk"]})  # 10% bad, but fewer than min_samples seen
    transform({"image": [jpeg_bytes] * 9 + [b"junk"]})  # 2 of 20: exactly 10% is allowed
    with pytest.raises(RuntimeError, match=r"3 of 21 images \(14\.3%\).*max_bad_fraction=0\.1.*--max_bad_fraction"):
        transform({"image": [b"junk"]})
    assert counter.state_dict() == {"seen": 21, "skipped": 3, "reasons": {"unreadable": 3}}

    never = BadSampleCounter(max_bad_fraction=1.0, min_samples=1)
    MultiCropBatchTransform(MultiCropTransform(**TINY), "image", counter=never)({"image": [b"junk"] * 5})
    assert never.bad_fraction == 1.0
    with pytest.raises(ValueError, match="max_bad_fraction"):
        BadSampleCounter(max_bad_fraction=1.5)


def test_collator_shapes_labels_and_errors():
    transform = MultiCropTransform(num_local_views=4, **TINY)
    examples = [{**transform(natural_image(seed=i)), "label": i} for i in range(3)]
    batch = MultiCropCollator()(examples)
    assert batch["pixel_values"].shape == (3, 2, 3, 32, 32)
    assert batch["local_pixel_values"].shape == (3, 4, 3, 16, 16)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1, 2]
    # Each view is copied once, with its values intact.
    assert torch.equal(batch["pixel_values"][1], examples[1]["pixel_values"])
    assert "labels" not in MultiCropCollator(return_labels=False)(examples)

    global_only = MultiCropTransform(num_local_views=0, **TINY)
    batch = MultiCropCollator()([global_only(natural_image()), global_only(natural_image())])
    assert set(batch) == {"pixel_values", "num_skipped"} and batch["pixel_values"].shape == (2, 2, 3, 32, 32)
    assert batch["num_skipped"].item() == 0

    collator = MultiCropCollator()
    with pytest.raises(RuntimeError, match="Every example of this batch \\(2\\) failed"):
        collator([None, {"pixel_values": None, "labels": 1}])
    assert collator.num_skipped == 2


def test_map_style_dataset_end_to_end(bad_values, jpeg_bytes):
    good = [{"bytes": encode(natural_image(seed=i), "PNG"), "path": None} for i in range(6)]
    bad = [bad_values["corrupt"], bad_values["truncated"]]
    dataset = datasets.Dataset.from_dict(
        {"image": good + bad, "label": list(range(8))},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=8)}),
    )
    counter = BadSampleCounter()
    prepared = prepare_pretraining_dataset(dataset, MultiCropTransform(**TINY), "image", "label", counter=counter)
    assert isinstance(prepared, datasets.Dataset) and len(prepared) == 8
    assert prepared[0]["pixel_values"].shape == (2, 3, 32, 32)
    assert prepared[7]["pixel_values"] is None
    collator = MultiCropCollator()
    loader = torch.utils.data.DataLoader(prepared, batch_size=4, collate_fn=collator)
    batches = list(loader)
    assert [b["pixel_values"].shape[0] for b in batches] == [4, 2]
    assert batches[1]["labels"].tolist() == [4, 5]
    assert collator.num_skipped == 2 and counter.skipped >= 2
    # The source dataset is untouched (no preprocessing pass, no decode flag change on the original).
    assert dataset.features["image"].decode is True

    with pytest.raises(ValueError, match="holds .* not images"):
        prepare_pretraining_dataset(dataset, MultiCropTransform(**TINY), "label")
    with pytest.raises(ValueError, match="not found"):
        prepare_pretraining_dataset(dataset, MultiCropTransform(**TINY), "img")


def test_stream_skips_bad_samples_and_goes_on(bad_values, jpeg_bytes):
    values = [jpeg_bytes, *bad_values.values(), jpeg_bytes, {"bytes": jpeg_bytes, "path": None}]

    def generate():
        for index, value in enumerate(values):
            yield {"image": value, "index": index}

    stream = datasets.IterableDataset.from_generator(generate)  # untyped: values of any type
    counter = BadSampleCounter()
    prepared = prepare_pretraining_dataset(stream, MultiCropTransform(**TINY), "image", counter=counter,
                                           map_batch_size=4)
    rows = list(prepared)
    assert len(rows) == 3 and [row["index"] for row in rows] == [0, len(values) - 2, len(values) - 1]
    assert all(row["pixel_values"].shape == (2, 3, 32, 32) for row in rows)
    assert (counter.seen, counter.skipped) == (len(values), len(bad_values))
    batch = MultiCropCollator()(rows)
    assert batch["pixel_values"].shape == (3, 2, 3, 32, 32)


# ----------------------------------------------------------------------------------------------------------------
# Loading datasets
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_dir")
    for class_index, name in enumerate(["cat", "dog"]):
        (root / name).mkdir()
        for index in range(3):
            image = natural_image(40 + index, 30, seed=10 * class_index + index)
            fmt, ext = ("PNG", "png") if index % 2 else ("JPEG", "jpg")
            image.save(root / name / f"{index}.{ext}", format=fmt)
    return root


def test_imagefolder(image_folder, tmp_path):
    dataset, image_column, label_column = load_pretraining_dataset(
        train_dir=str(image_folder), cache_dir=str(tmp_path)
    )
    assert (image_column, label_column) == ("image", "label")
    assert len(dataset) == 6 and dataset.features["label"].names == ["cat", "dog"]
    prepared = prepare_pretraining_dataset(dataset, MultiCropTransform(**TINY), image_column, label_column)
    batch = MultiCropCollator()([prepared[i] for i in range(6)])
    assert batch["pixel_values"].shape == (6, 2, 3, 32, 32)
    assert sorted(batch["labels"].tolist()) == [0, 0, 0, 1, 1, 1]

    stream, image_column, label_column = load_pretraining_dataset(
        train_dir=str(image_folder), streaming=True, cache_dir=str(tmp_path), shuffle_buffer_size=4
    )
    assert isinstance(stream, datasets.IterableDataset) and (image_column, label_column) == ("image", "label")
    rows = list(prepare_pretraining_dataset(stream, MultiCropTransform(**TINY), image_column, label_column))
    assert len(rows) == 6 and sorted(row["labels"] for row in rows) == [0, 0, 0, 1, 1, 1]
    assert set(rows[0]) == {"pixel_values", "local_pixel_values", "labels", "num_skipped"}

    with pytest.raises(ValueError, match="not a directory"):
        load_pretraining_dataset(train_dir=str(tmp_path / "missing"))


def test_parquet_files(tmp_path, monkeypatch):
    # `datasets` sleeps 5 s after each pass over streamed parquet files (an Arrow thread-shutdown workaround).
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    features = datasets.Features({"img": datasets.Image(), "target": datasets.ClassLabel(names=["a", "b", "c"])})
    paths = []
    for shard in range(2):
        images = [natural_image(seed=10 * shard + i) for i in range(4)]
        path = tmp_path / f"train-{shard}.parquet"
        datasets.Dataset.from_dict({"img": images, "target": [0, 1, 2, 0]}, features=features).to_parquet(path)
        paths.append(str(path))

    dataset, image_column, label_column = load_pretraining_dataset(data_files=paths, cache_dir=str(tmp_path / "c"))
    assert (image_column, label_column) == ("img", "target") and len(dataset) == 8
    prepared = prepare_pretraining_dataset(dataset, MultiCropTransform(**TINY), image_column, label_column)
    assert prepared[3]["pixel_values"].shape == (2, 3, 32, 32) and prepared[3]["labels"] == 0

    stream, image_column, _ = load_pretraining_dataset(
        data_files=str(tmp_path / "*.parquet"), streaming=True, cache_dir=str(tmp_path / "c")
    )
    assert stream.num_shards == 2 and image_column == "img"
    rows = list(prepare_pretraining_dataset(stream, MultiCropTransform(**TINY), image_column, "target"))
    assert len(rows) == 8 and sorted(row["labels"] for row in rows) == [0, 0, 0, 0, 1, 1, 2, 2]


def write_webdataset_shard(path, start, count):
    with tarfile.open(path, "w") as tar:
        for index in range(start, start + count):
            for ext, data in (("jpg", encode(natural_image(seed=index))), ("cls", str(index % 3).encode())):
                info = tarfile.TarInfo(f"{index:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path):
    shards = [tmp_path / "shard-000000.tar", tmp_path / "shard-000001.tar"]
    write_webdataset_shard(shards[0], 0, 5)
    write_webdataset_shard(shards[1], 5, 5)

    dataset, image_column, label_column = load_pretraining_dataset(
        data_files=[str(s) for s in shards], cache_dir=str(tmp_path / "c")
    )
    assert (image_column, label_column) == ("jpg", "cls") and len(dataset) == 10
    prepared = prepare_pretraining_dataset(dataset, MultiCropTransform(**TINY), image_column, label_column)
    batch = MultiCropCollator()([prepared[i] for i in range(10)])
    assert batch["pixel_values"].shape == (10, 2, 3, 32, 32)
    assert batch["labels"].tolist() == [i % 3 for i in range(10)]

    stream, image_column, label_column = load_pretraining_dataset(
        data_files=str(tmp_path / "shard-*.tar"), streaming=True, seed=1, cache_dir=str(tmp_path / "c")
    )
    assert (image_column, label_column) == ("jpg", "cls") and stream.num_shards == 2
    assert check_num_shards(stream, world_size=2) == 2
    rows = list(prepare_pretraining_dataset(stream, MultiCropTransform(**TINY), image_column, label_column))
    assert len(rows) == 10 and sorted(row["labels"] for row in rows) == sorted(i % 3 for i in range(10))
    # The same seed gives the same order on every process.
    again, _, _ = load_pretraining_dataset(
        data_files=str(tmp_path / "shard-*.tar"), streaming=True, seed=1, cache_dir=str(tmp_path / "c")
    )
    assert [row["__key__"] for row in stream] == [row["__key__"] for row in again]


def test_check_num_shards(tmp_path, caplog):
    stream = datasets.Dataset.from_dict({"x": list(range(8))}).to_iterable_dataset(num_shards=2)
    assert check_num_shards(stream, world_size=2) == 2
    with pytest.raises(ValueError, match="2 shard\\(s\\) for 4 processes.*at least 4"):
        check_num_shards(stream, world_size=4, strict=True)
    with caplog.at_level("WARNING", logger="trainer.data"):
        check_num_shards(stream, world_size=4)
        check_num_shards(stream, world_size=1, dataloader_num_workers=4)
    assert "whole stream" in caplog.text and "idle" in caplog.text
    assert check_num_shards(datasets.Dataset.from_dict({"x": [1]}), world_size=8) is None


def test_streams_are_checked_for_enough_shards_per_process(caplog):
    """`prepare_pretraining_dataset` warns when a stream has fewer shards than the run's processes."""
    from accelerate import PartialState

    features = datasets.Features({"image": datasets.Image()})
    stream = datasets.Dataset.from_dict({"image": [natural_image(seed=i) for i in range(4)]}, features=features)
    stream = stream.to_iterable_dataset(num_shards=2)
    state = PartialState()
    with caplog.at_level("WARNING", logger="trainer.data"):
        prepare_pretraining_dataset(stream, MultiCropTransform(**TINY), "image")
        assert "shard" not in caplog.text  # 1 process here
        original = state.num_processes
        state.num_processes = 4  # as under a 4-process launch
        try:
            prepared = prepare_pretraining_dataset(stream, MultiCropTransform(**TINY), "image")
        finally:
            state.num_processes = original
    assert "2 shard(s) for 4 processes" in caplog.text and "at least 4 files" in caplog.text
    assert len(list(prepared)) == 4  # a warning: the stream still works
    caplog.clear()
    with caplog.at_level("WARNING", logger="trainer.data"):
        prepare_pretraining_dataset(stream, MultiCropTransform(**TINY), "image", dataloader_num_workers=4)
    assert "2 shard(s) for 1 process(es) x 4 DataLoader workers" in caplog.text


def test_data_files_of_an_image_format_known_to_datasets(tmp_path):
    """The builder is `datasets`' own inference: any image format its `imagefolder` reads, e.g. PCX."""
    for index in range(3):
        natural_image(seed=index).save(tmp_path / f"{index}.pcx", format="PCX")
    dataset, image_column, label_column = load_pretraining_dataset(
        data_files=str(tmp_path / "*.pcx"), cache_dir=str(tmp_path / "c")
    )
    assert (image_column, label_column, len(dataset)) == ("image", None, 3)
    assert np.array_equal(np.asarray(dataset[1]["image"].convert("RGB")), np.asarray(natural_image(seed=1)))


def test_image_column_detection_and_errors(tmp_path):
    image = datasets.Image()
    assert detect_image_column(datasets.Features({"picture": image, "y": datasets.Value("int64")})) == "picture"
    webdataset_like = datasets.Features({"__key__": datasets.Value("string"), "png": datasets.Value("binary")})
    assert detect_image_column(webdataset_like) == "png"
    with pytest.raises(ValueError, match=r"several image columns \['a', 'b'\].*--image_column_name"):
        detect_image_column(datasets.Features({"a": image, "b": image}))
    with pytest.raises(ValueError, match=r"no image column.*\['text'\].*--image_column_name"):
        detect_image_column(datasets.Features({"text": datasets.Value("string")}))
    assert detect_image_column(None, "photo") == "photo"
    with pytest.raises(ValueError, match="features are unknown"):
        detect_image_column(None)
    with pytest.raises(ValueError, match=r"'photo' not found.*\['a', 'b'\].*--image_column_name"):
        detect_image_column(datasets.Features({"a": image, "b": image}), "photo")
    assert detect_image_column(datasets.Features({"a": image, "b": image}), "b") == "b"

    assert detect_label_column(datasets.Features({"i": image, "fine": datasets.ClassLabel(names=["x"])})) == "fine"
    assert detect_label_column(datasets.Features({"i": image, "labels": datasets.Value("int32")})) == "labels"
    assert detect_label_column(datasets.Features({"i": image, "label": datasets.Value("string")})) is None

    # Through the loader: two image columns in a parquet file, then the column given explicitly.
    features = datasets.Features({"a": image, "b": image})
    path = tmp_path / "two.parquet"
    datasets.Dataset.from_dict({"a": [natural_image()], "b": [natural_image()]}, features=features).to_parquet(path)
    with pytest.raises(ValueError, match="several image columns"):
        load_pretraining_dataset(data_files=str(path), cache_dir=str(tmp_path / "c"))
    dataset, image_column, label_column = load_pretraining_dataset(
        data_files=str(path), image_column_name="b", cache_dir=str(tmp_path / "c")
    )
    assert (image_column, label_column) == ("b", None)
    with pytest.raises(ValueError, match=r"'c' not found.*\['a', 'b'\]"):
        load_pretraining_dataset(data_files=str(path), image_column_name="c", cache_dir=str(tmp_path / "c"))

    with pytest.raises(ValueError, match="--dataset_name.*--train_dir.*--data_files"):
        load_pretraining_dataset()
    with pytest.raises(ValueError, match="Cannot tell the format"):
        load_pretraining_dataset(data_files="data.xyz")  # an extension that `datasets` has no builder for
    with pytest.raises(ValueError, match="mixes formats"):
        load_pretraining_dataset(data_files={"train": "a.parquet", "test": "b.tar"})
    with pytest.raises(ValueError, match="not both"):
        load_pretraining_dataset(dataset_name="x", train_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------------------------------
# Built-in digits
# ----------------------------------------------------------------------------------------------------------------


def test_digits_dataset():
    digits = load_digits_dataset(image_size=32, seed=0)
    train, test = digits["train"], digits["test"]
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert isinstance(train.features["image"], datasets.Image)
    assert train.features["label"].names == [str(d) for d in range(10)]
    image = train[0]["image"]
    assert image.mode == "RGB" and image.size == (32, 32)
    pixels = np.asarray(image)
    assert pixels.max() > 200 and pixels.min() < 30  # 0..16 was scaled to 0..255
    # Stratified: every class in both splits, in proportion.
    counts = np.bincount(test["label"], minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38

    again = load_digits_dataset(image_size=32, seed=0)
    assert again["test"]["label"] == test["label"]
    assert np.array_equal(np.asarray(again["test"][5]["image"]), np.asarray(test[5]["image"]))
    assert load_digits_dataset(image_size=16, seed=1)["test"]["label"] != test["label"]
    assert load_digits_dataset(image_size=16, seed=1)["train"][0]["image"].size == (16, 16)

    transform = MultiCropTransform.from_lejepa_config(LeJepaConfig.from_preset("vit-tiny-test"))
    prepared = prepare_pretraining_dataset(train, transform, "image", "label")
    batch = MultiCropCollator()([prepared[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 2, 3, 32, 32) and batch["labels"].tolist() == train["label"][:4]


def test_collator_in_dataloader_workers_stacks_into_shared_memory():
    generator = torch.Generator().manual_seed(0)
    examples = [
        {"pixel_values": torch.randn(2, 3, 8, 8, generator=generator),
         "local_pixel_values": torch.randn(3, 3, 4, 4, generator=generator)}
        for _ in range(6)
    ]
    loader = torch.utils.data.DataLoader(examples, batch_size=3, num_workers=1, collate_fn=MultiCropCollator())
    batches = list(loader)
    assert len(batches) == 2
    for index, batch in enumerate(batches):
        expected = torch.stack([e["pixel_values"] for e in examples[3 * index : 3 * index + 3]])
        assert torch.equal(batch["pixel_values"], expected)
        assert batch["local_pixel_values"].shape == (3, 3, 3, 4, 4)
