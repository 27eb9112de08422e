"""Images that are not 8-bit RGB (16-bit grayscale, CT values, multi-band tiles, arrays): read with their values and
channels, the run's format and per-channel statistics from a sample, the backbone built with the data's channels, views
made on the device on any channel count, and an image processor that a fresh process without this project reloads.
Every image is made in the test; the references are the arrays written, float64 formulas and torchvision."""

import io
import json
import sys

import datasets
import numpy as np
import PIL.Image
import pytest
import tifffile
import torch
from conftest import run_without_package
from torchvision.transforms.v2 import functional as tv_functional
from transformers import (
    AutoImageProcessor,
    ConvNextConfig,
    Dinov2Config,
    ResNetConfig,
    TimmWrapperConfig,
    ViTConfig,
)

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining, LeJepaModel
from modeling_lejepa.configuration_lejepa import set_backbone_num_channels
from trainer.data import DecodeResizeTransform, MultiCropCollator, MultiCropConfig, MultiCropTransform
from trainer.data.arrays import ImageFormat, channels_first, inspect_images, read_image_array
from trainer.data.collator import MultiCropBatchTransform
from trainer.data.device_views import DeviceMultiCrop, view_generator
from trainer.data.sources import (
    detect_image_column,
    inspect_dataset_images,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
)
from trainer.data.views import channel_jitter
from trainer.evaluation import extract_embeddings, raw_pixels_like
from trainer.evaluation_command import evaluate_main
from trainer.recipes import build_pretraining_config


def tile(seed: int = 0, bands: int = 13, size: int = 24, dtype=np.uint16) -> np.ndarray:
    """A (H, W, C) tile whose bands have different levels, as satellite bands do."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 3000, (size, size, bands)) + 1500 * np.arange(bands)).astype(dtype)


def tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def png16_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")  # uint16 (H, W): mode I;16
    return buffer.getvalue()


def float_views(image_format: ImageFormat, size: int, **overrides) -> MultiCropConfig:
    """Views of `image_format` data that crop each whole image at its own size, with no augmentation unless asked."""
    settings = dict(
        num_global_views=1, num_local_views=0, global_image_size=size, global_crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0), horizontal_flip_prob=0.0, global_blur_prob=0.0, channel_jitter_prob=0.0,
        pixel_format="float", rescale_factor=image_format.rescale_factor, image_mean=image_format.image_mean,
        image_std=image_format.image_std,
    )
    return MultiCropConfig(**(settings | overrides))


def device_views(config: MultiCropConfig, arrays: list[np.ndarray], seed: int = 0) -> torch.Tensor:
    """The workers' part (DecodeResizeTransform), the collator and DeviceMultiCrop, as the trainer chains them."""
    resize = DecodeResizeTransform(config)
    batch = MultiCropCollator()([resize(array) for array in arrays])
    return DeviceMultiCrop(config)(batch["images"], batch["image_sizes"], view_generator(seed, 0))["pixel_values"]


# ------------------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("kind", ["tiff_hwc", "tiff_contig", "tiff_chw", "npy", "png16", "tiff16", "list"])
def test_every_source_is_read_with_its_values_and_channels(kind, tmp_path):
    array = tile(bands=1 if kind in ("png16", "tiff16") else 13)
    if kind in ("png16", "tiff16"):
        array = array[..., 0]
        array[0, 0], array[0, 1] = 65535, 257  # the top of the range and a value whose low byte is not its high one
    expected = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    if kind == "tiff_hwc":
        value = {"bytes": tiff_bytes(array), "path": None}
    elif kind == "tiff_contig":  # one page of 13 samples per pixel, as GeoTIFFs are laid out (PIL cannot open it)
        value = {"bytes": tiff_bytes(array, photometric="minisblack", planarconfig="contig"), "path": None}
    elif kind == "tiff_chw":
        (tmp_path / "tile.tif").write_bytes(tiff_bytes(expected))
        value = str(tmp_path / "tile.tif")
    elif kind == "npy":
        np.save(tmp_path / "tile.npy", array)
        value = {"bytes": None, "path": str(tmp_path / "tile.npy")}
    elif kind == "png16":
        value = png16_bytes(array)
    elif kind == "tiff16":
        value = tiff_bytes(array)
    else:  # a `datasets` Array3D column as the python formatter gives it
        value = array.tolist()
    read = read_image_array(value, dtype="uint16" if kind == "list" else None)
    assert read.dtype == np.uint16 and read.shape == expected.shape
    np.testing.assert_array_equal(read, expected)


def test_layouts_are_detected_and_checked():
    array = np.zeros((13, 20, 30), dtype=np.float32)
    assert channels_first(array).shape == (13, 20, 30)
    assert channels_first(np.moveaxis(array, 0, -1)).shape == (13, 20, 30)
    assert channels_first(np.moveaxis(array, 0, -1), num_channels=13).shape == (13, 20, 30)
    assert channels_first(np.zeros((20, 30))).shape == (1, 20, 30)
    with pytest.raises(ValueError, match="no axis of 4 channels"):
        channels_first(array, num_channels=4, where=" (a.tif)")
    with pytest.raises(ValueError, match="--num_channels"):
        channels_first(np.zeros((5, 20, 5)))
    with pytest.raises(ValueError, match="NaN"):
        read_image_array(np.full((3, 8, 8), np.nan, dtype=np.float32))


# ---------------------------------------------------------------------------------------------------- inspection
def test_eight_bit_images_keep_the_rgb_path(tmp_path):
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (20, 10), (10, 200, 30)).save(buffer, format="JPEG")
    gray = io.BytesIO()
    PIL.Image.new("L", (20, 10), 100).save(gray, format="PNG")
    rgb_tiff = tiff_bytes(np.zeros((10, 20, 3), dtype=np.uint8))
    values = [buffer.getvalue(), gray.getvalue(), rgb_tiff, np.zeros((10, 20, 3), dtype=np.uint8)]
    assert inspect_images(values).pixel_format == "rgb"
    four_bands = tiff_bytes(np.zeros((10, 20, 4), dtype=np.uint8))  # Pillow would read it as RGBA
    assert inspect_images([four_bands]).num_channels == 4
    column = np.zeros((10, 20, 3), dtype=np.uint8).tolist()  # a `datasets` array column keeps its values
    assert inspect_images([column], dtype="uint8").pixel_format == "float"
    one_channel = inspect_images([gray.getvalue()], num_channels=1)  # asked for: values kept, one channel
    assert (one_channel.pixel_format, one_channel.num_channels, one_channel.rescale_factor) == ("float", 1, 1 / 255)


def test_statistics_of_a_multiband_sample_match_a_float64_reference():
    arrays = [tile(seed) for seed in range(4)]
    image_format = inspect_images([tiff_bytes(array) for array in arrays])
    assert (image_format.pixel_format, image_format.num_channels, image_format.dtype) == ("float", 13, "uint16")
    assert image_format.rescale_factor == 1 / 65535
    pixels = np.concatenate([array.reshape(-1, 13) for array in arrays]).astype(np.float64) / 65535
    np.testing.assert_allclose(image_format.image_mean, pixels.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(image_format.image_std, pixels.std(axis=0), rtol=1e-6)
    given = inspect_images([tiff_bytes(arrays[0])], image_mean=[0.1] * 13, image_std=[0.2] * 13, max_pixel_value=4095)
    assert given.image_mean == (0.1,) * 13 and given.rescale_factor == 1 / 4095
    with pytest.raises(ValueError, match="one value per channel"):
        inspect_images([tiff_bytes(arrays[0])], image_mean=[0.1], image_std=[0.2])


def test_a_folder_mixing_4_and_13_bands_stops_naming_the_file(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    for index in range(6):
        tifffile.imwrite(folder / f"tile{index}.tif", tile(index, bands=4 if index == 3 else 13))
    dataset = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
    with pytest.raises(ValueError, match=r"tile3\.tif does not fit the 13 channels of .*tile0\.tif"):
        inspect_dataset_images(dataset, "image")
    dtypes = [tiff_bytes(tile(0)), tiff_bytes(tile(1, dtype=np.int16))]
    with pytest.raises(ValueError, match="row 1 is int16"):
        inspect_images(dtypes)


def test_array3d_columns_of_a_parquet_file_are_found_and_read(tmp_path):
    arrays = [tile(seed, size=16) for seed in range(3)]
    features = datasets.Features({"pixels": datasets.Array3D(shape=(16, 16, 13), dtype="uint16")})
    datasets.Dataset.from_dict({"pixels": arrays}, features=features).to_parquet(tmp_path / "tiles.parquet")
    dataset = datasets.load_dataset("parquet", data_files=str(tmp_path / "tiles.parquet"), split="train")
    assert detect_image_column(dataset.features) == "pixels"
    image_format = inspect_dataset_images(dataset, "pixels")
    assert (image_format.num_channels, image_format.dtype) == (13, "uint16")
    config = float_views(image_format, 16)
    prepared = prepare_pretraining_dataset(dataset, DecodeResizeTransform(config), "pixels")
    image = prepared[0]["images"]
    expected = torch.from_numpy(np.moveaxis(arrays[0], -1, 0).astype(np.float64) / 65535)
    torch.testing.assert_close(image.double(), expected, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------------------- views
def test_sixteen_bit_grayscale_keeps_its_low_byte():
    low = np.full((16, 16), 0x1200, dtype=np.uint16)
    high = low + 0x40  # the same high byte: identical once divided by 257 and rounded to 8 bits
    values = [png16_bytes(low), png16_bytes(high)]
    image_format = inspect_images(values, image_mean=[0.5], image_std=[0.25])
    arrays = [read_image_array(value, 1) for value in values]
    views = device_views(float_views(image_format, 16), arrays)
    assert not torch.equal(views[0], views[1])
    expected = (0x40 / 65535) / 0.25  # the difference the low byte makes, after normalisation
    torch.testing.assert_close((views[1] - views[0]).double(), torch.full_like(views[0], expected).double())
    # the 8-bit RGB conversion loses it: both images are one grey
    from trainer.data import to_rgb_image

    assert np.array_equal(np.asarray(to_rgb_image(low)), np.asarray(to_rgb_image(high)))


def test_ct_values_stay_negative_and_unclipped():
    rng = np.random.default_rng(0)
    ct = rng.integers(-1024, 3000, (20, 20)).astype(np.int16)  # Hounsfield units: air is -1000
    image_format = inspect_images([tiff_bytes(ct)])
    assert image_format.rescale_factor == 1 / 32767
    views = device_views(float_views(image_format, 20), [read_image_array(tiff_bytes(ct), 1)])
    mean, std = image_format.image_mean[0], image_format.image_std[0]
    expected = (ct.astype(np.float64) / 32767 - mean) / std
    np.testing.assert_allclose(views[0, 0, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert views.min() == pytest.approx(expected.min(), rel=1e-5) and expected.min() < -1


def worker_views(config: MultiCropConfig, arrays: list[np.ndarray], seed: int = 0) -> torch.Tensor:
    """The views the DataLoader workers make (MultiCropTransform), stacked by the collator."""
    torch.manual_seed(seed)
    transform = MultiCropTransform(config)
    return MultiCropCollator()([transform(array) for array in arrays])["pixel_values"]


@pytest.mark.parametrize("make_views", [device_views, worker_views], ids=["device", "workers"])
def test_flip_and_blur_on_13_channels_match_torchvision(make_views):
    array = tile(3, size=20)
    image_format = inspect_images([array])
    config = float_views(image_format, 20, horizontal_flip_prob=1.0, global_blur_prob=1.0, blur_kernel_size=5,
                         blur_sigma=(1.3, 1.3))
    views = make_views(config, [read_image_array(array)])
    pixels = torch.from_numpy(np.moveaxis(array, -1, 0).astype(np.float32) / 65535)
    expected = tv_functional.gaussian_blur(tv_functional.horizontal_flip(pixels), [5, 5], [1.3, 1.3])
    mean = torch.tensor(image_format.image_mean).view(13, 1, 1)
    std = torch.tensor(image_format.image_std).view(13, 1, 1)
    torch.testing.assert_close(views[0, 0], (expected - mean) / std, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make_views", [device_views, worker_views], ids=["device", "workers"])
def test_each_channel_draws_its_own_brightness_and_contrast(make_views):
    array = tile(4, size=20)
    image_format = inspect_images([array])
    views = make_views(float_views(image_format, 20, channel_jitter_prob=1.0), [read_image_array(array)])
    mean = torch.tensor(image_format.image_mean, dtype=torch.float64).view(13, 1, 1)
    std = torch.tensor(image_format.image_std, dtype=torch.float64).view(13, 1, 1)
    raw = views[0, 0].double() * std + mean  # the jittered values, before normalisation
    pixels = torch.from_numpy(np.moveaxis(array, -1, 0).astype(np.float64) / 65535)
    brightness = raw.mean(dim=(1, 2)) / pixels.mean(dim=(1, 2))  # b: the channel mean is scaled by it
    contrast = raw.std(dim=(1, 2)) / pixels.std(dim=(1, 2))  # k: the deviations are scaled by it
    for factors in (brightness, contrast):
        assert factors.min() >= 0.8 - 1e-5 and factors.max() <= 1.2 + 1e-5
        assert factors.std() > 0.02  # one draw per channel, not one per view


def test_channel_jitter_matches_its_definition_and_colour_operations_stay_off():
    generator = torch.Generator().manual_seed(0)
    views = torch.rand(3, 13, 8, 8, generator=generator, dtype=torch.float64) - 0.2  # negative values too
    factors = torch.rand(3, 13, 2, generator=generator, dtype=torch.float64) + 0.5
    reference = np.empty_like(views.numpy())
    for n in range(3):
        for c in range(13):
            x = views[n, c].numpy()
            contrast, brightness = factors[n, c].numpy()
            reference[n, c] = (x - x.mean()) * contrast + x.mean() * brightness
    np.testing.assert_allclose(channel_jitter(views, factors).numpy(), reference, rtol=1e-10, atol=1e-14)
    config = MultiCropConfig(pixel_format="float", image_mean=[0.0] * 13, image_std=[1.0] * 13)
    parameters = DeviceMultiCrop(config).sample_parameters(64, view_generator(0, 0))
    for p in parameters.values():
        assert not (p.jitter.any() or p.grayscale.any() or p.solarize.any())
        assert 0.6 < p.channel_jitter.float().mean() < 1.0 and p.channel_factors.shape[1:] == (13, 2)
        assert p.channel_factors.min() >= 0.8 and p.channel_factors.max() <= 1.2
    rgb = DeviceMultiCrop(MultiCropConfig()).sample_parameters(4, view_generator(0, 0))["pixel_values"]
    assert rgb.channel_jitter is None and rgb.channel_factors is None


def test_a_bad_band_count_in_training_is_skipped_and_counted():
    config = MultiCropConfig(pixel_format="float", image_mean=[0.0] * 13, image_std=[1.0] * 13,
                             global_image_size=16, local_image_size=8)
    transform = MultiCropBatchTransform(DecodeResizeTransform(config), "image")
    output = transform({"image": [tiff_bytes(tile(0)), tiff_bytes(tile(1, bands=4))]})
    assert output["images"][0].shape[0] == 13 and output["images"][1] is None
    assert transform.counter.skipped == 1 and transform.counter.reasons == {"channels": 1}


# ------------------------------------------------------------------------------------------------ model, processor
@pytest.mark.parametrize(
    "backbone_config",
    [
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8,
                  image_size=32),
        Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8,
                     image_size=32),
        ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
        ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8, layer_type="basic"),
        TimmWrapperConfig(architecture="resnet10t", do_pooling=True),
    ],
    ids=["vit", "dinov2", "convnext", "resnet", "timm"],
)
def test_every_backbone_family_is_built_with_the_datas_channels(backbone_config):
    config = LeJepaConfig(backbone_config=backbone_config, global_image_size=32, local_image_size=16)
    set_backbone_num_channels(config.backbone_config, 13)
    config = LeJepaConfig.from_dict(config.to_dict())  # the setting survives serialisation
    assert config.num_channels == 13
    model = LeJepaModel(config).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 13, 32, 32)).pooler_output.shape[0] == 2
        with pytest.raises((ValueError, RuntimeError)):  # a 3-channel input no longer fits
            model(torch.randn(2, 3, 32, 32))


def test_build_pretraining_config_sets_the_channels_and_checks_a_checkpoints(tmp_path):
    config = build_pretraining_config(model_preset="vit-tiny-test", num_channels=4)
    assert config.num_channels == 4 and config.backbone_config.num_channels == 4
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="takes 4-channel images, but the data has 13"):
        build_pretraining_config(model_name_or_path=str(tmp_path), num_channels=13)


def test_the_image_processor_reloads_without_this_project_and_prepares_13_bands(tmp_path):
    arrays = [tile(seed, size=32) for seed in range(3)]
    image_format = inspect_images(arrays)
    image_format.image_processor(32).save_pretrained(tmp_path)
    np.save(tmp_path / "tile.npy", arrays[0])
    result = run_without_package(
        "import numpy as np, json\n"
        "from transformers import AutoImageProcessor\n"
        "processor = AutoImageProcessor.from_pretrained('.')\n"
        "tile = np.load('tile.npy')\n"
        "last = processor(images=tile, input_data_format='channels_last', return_tensors='pt')['pixel_values']\n"
        "first = processor(images=np.moveaxis(tile, -1, 0), input_data_format='channels_first',\n"
        "                  return_tensors='pt')['pixel_values']\n"
        "assert (last == first).all()\n"
        "np.save('prepared.npy', last.numpy())\n",
        cwd=tmp_path,
    )
    assert result.returncode == 0
    prepared = np.load(tmp_path / "prepared.npy")
    mean, std = np.array(image_format.image_mean), np.array(image_format.image_std)
    expected = (np.moveaxis(arrays[0], -1, 0) / 65535 - mean[:, None, None]) / std[:, None, None]
    assert prepared.shape == (1, 13, 32, 32)
    np.testing.assert_allclose(prepared[0], expected, rtol=1e-4, atol=1e-4)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["do_convert_rgb"] is False and len(saved["image_mean"]) == 13


def test_a_folder_of_npy_arrays_is_a_dataset_of_float_images(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(0, 1, (5, 12, 12)).astype(np.float32) for _ in range(3)]  # (C, H, W), negative values
    for index, array in enumerate(arrays):
        np.save(tmp_path / f"array{index}.npy", array)
    dataset, column, label = load_pretraining_dataset(train_dir=str(tmp_path))
    assert (len(dataset), column, label) == (3, "image", None)
    image_format = inspect_dataset_images(dataset, column)
    assert (image_format.num_channels, image_format.rescale_factor) == (5, 1.0)
    np.testing.assert_allclose(image_format.image_mean, np.stack(arrays).astype(np.float64).mean(axis=(0, 2, 3)),
                               rtol=1e-6)
    prepared = prepare_pretraining_dataset(dataset, DecodeResizeTransform(float_views(image_format, 12)), column)
    torch.testing.assert_close(prepared[1]["images"], torch.from_numpy(arrays[1]))
    assert load_pretraining_dataset(train_dir=str(tmp_path), streaming=True)[0].num_shards == 3


def test_without_tifffile_rgb_tiffs_keep_working_and_multiband_ones_ask_for_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tifffile", None)  # `import tifffile` raises ImportError
    rgb = tiff_bytes(np.zeros((10, 20, 3), dtype=np.uint8), photometric="rgb")
    assert inspect_images([rgb]).pixel_format == "rgb"
    with pytest.raises(ImportError, match=r"lejepa-hf\[tiff\]"):
        inspect_images([tiff_bytes(tile(0))])


def test_frozen_evaluation_of_a_13_band_model_and_its_raw_pixel_baseline(tmp_path):
    folder = tmp_path / "data"
    arrays = {}
    for split, count in (("train", 6), ("test", 4)):
        for label, level in (("dark", 0), ("bright", 20000)):
            (folder / split / label).mkdir(parents=True)
            for index in range(count):
                array = tile(len(arrays), size=8) + np.uint16(level)
                tifffile.imwrite(folder / split / label / f"{index}.tif", array)
                arrays[(split, label, index)] = array
    # 8 x 8 tiles of 13 bands: the channel axis is not the shorter one, so the layout needs `num_channels`
    image_format = inspect_images([tiff_bytes(array) for array in arrays.values()], num_channels=13)
    checkpoint = tmp_path / "checkpoint"
    # 8 px: the raw-pixel baseline's effective rank diagonalises a (13 * 8 * 8)-square covariance
    config = LeJepaConfig.from_preset("vit-tiny-test", global_image_size=8, local_image_size=8)
    set_backbone_num_channels(config.backbone_config, 13)
    LeJepaForPreTraining(config).save_pretrained(checkpoint)
    image_format.image_processor(8).save_pretrained(checkpoint)

    # the raw-pixel baseline's embedding is the processor's output: the rescaled, normalised 13 bands
    test = datasets.load_dataset("imagefolder", data_dir=str(folder), split="test")
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = LeJepaModel.from_pretrained(checkpoint)
    embeddings, labels = extract_embeddings(raw_pixels_like(model), test, processor)
    mean, std = np.array(image_format.image_mean), np.array(image_format.image_std)
    first = arrays[("test", test.features["label"].names[labels[0]], 0)]
    expected = ((np.moveaxis(first, -1, 0) / 65535 - mean[:, None, None]) / std[:, None, None]).ravel()
    np.testing.assert_allclose(embeddings[0], expected, rtol=1e-4, atol=1e-4)

    results = evaluate_main(["--model_name_or_path", str(checkpoint), "--dataset_name", str(folder),
                             "--raw_pixel_baseline", "--sigreg_num_slices", "16", "--output_dir", str(tmp_path)])
    assert results["raw_pixel_baseline"]["knn_accuracy"] == 1.0  # the classes differ by 20000 in every band
    assert results["raw_pixel_baseline"]["embedding_size"] == 13 * 8 * 8
    assert 0 <= results["knn_accuracy"] <= 1
