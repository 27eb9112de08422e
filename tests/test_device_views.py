"""The views made on the device (`augment_on_device`): parameter distributions against torchvision's, pixels against
torchvision's functional ops, mixed image sizes, seeding, 2 processes, bad images, reduced-size decoding and FLOPs."""

import importlib.util
import io
import math

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import REPO_ROOT
from scipy.stats import ks_2samp
from torchvision import transforms as tv_transforms
from torchvision.transforms.v2 import functional as F

from modeling_lejepa import LeJepaConfig, LeJepaForPreTraining
from trainer import LeJepaTrainer, LeJepaTrainingArguments, resolve_augment_on_device
from trainer.arguments import CPU_DEVICE_VIEWS_MAX_SIZE
from trainer.data import (
    DecodeResizeTransform,
    MultiCropCollator,
    MultiCropConfig,
    decode_image,
    prepare_pretraining_dataset,
)
from trainer.data.device_views import JITTER_OPERATIONS, DeviceMultiCrop, view_generator

TINY = LeJepaConfig.from_preset("vit-tiny-test")


def binomial_tolerance(p: float, n: int) -> float:
    """4.5 standard deviations of a rate estimated from `n` draws (a false alarm about once in 150,000 checks)."""
    return 4.5 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9


# ------------------------------------------------------------------------------------------------------- crops
@pytest.mark.parametrize("height, width", [(372, 496), (40, 30), (60, 400)], ids=["4:3", "small-3:4", "panorama"])
@pytest.mark.parametrize("kind", ["global", "local"])
def test_crop_distribution_matches_torchvision(height, width, kind):
    """Area fraction, aspect ratio and position of 4,000 crops against 4,000 of torchvision's
    `RandomResizedCrop.get_params` on an image of the same size: two-sample Kolmogorov-Smirnov statistics below
    0.045 (the 1% critical value for 4,000 + 4,000 draws is 0.036; the seeds are fixed, so the test is exact)."""
    config = MultiCropConfig()
    scale = config.global_crop_scale if kind == "global" else config.local_crop_scale
    key = "pixel_values" if kind == "global" else "local_pixel_values"
    count = config.num_global_views if kind == "global" else config.num_local_views
    views = DeviceMultiCrop(config)
    num_images = 4000 // count
    parameters = views.sample_parameters(num_images, view_generator(0, 0))[key]
    sizes = torch.tensor([[height, width]] * num_images)
    left, top, right, bottom = views.crop_boxes(sizes, parameters).unbind(1)
    w, h = right - left, bottom - top
    assert (left >= 0).all() and (top >= 0).all() and (right <= width).all() and (bottom <= height).all()
    assert (w == w.round()).all() and (h == h.round()).all() and (w >= 1).all() and (h >= 1).all()
    ours = {
        "area": (w * h / (width * height)).numpy(), "ratio": (w / h).numpy(),
        "centre_x": ((left + w / 2) / width).numpy(), "centre_y": ((top + h / 2) / height).numpy(),
    }
    torch.manual_seed(1)
    image = torch.empty(3, height, width)
    reference = {name: [] for name in ours}
    for _ in range(len(w)):
        i, j, rh, rw = tv_transforms.RandomResizedCrop.get_params(image, list(scale), list(config.crop_ratio))
        reference["area"].append(rw * rh / (width * height))
        reference["ratio"].append(rw / rh)
        reference["centre_x"].append((j + rw / 2) / width)
        reference["centre_y"].append((i + rh / 2) / height)
    for name in ours:
        statistic = ks_2samp(ours[name], np.array(reference[name])).statistic
        assert statistic < 0.045, (name, statistic)


def test_augmentation_rates_match_the_recipe():
    """Flip, jitter, grayscale, blur and solarize rates per view (global views have their own blur and solarize
    probabilities, as on the CPU path) within 4.5 binomial standard deviations; jitter factors and blur sigmas in
    their ranges with the uniform mean; the jitter order a uniform permutation."""
    config = MultiCropConfig()
    parameters = DeviceMultiCrop(config).sample_parameters(3000, view_generator(1, 2, 3))
    expected = {
        "pixel_values": {"flip": [0.5, 0.5], "jitter": [0.8, 0.8], "grayscale": [0.2, 0.2], "blur": [1.0, 0.1],
                         "solarize": [0.0, 0.2]},
        "local_pixel_values": {"flip": [0.5] * 6, "jitter": [0.8] * 6, "grayscale": [0.2] * 6, "blur": [0.5] * 6,
                               "solarize": [0.0] * 6},
    }
    for key, rates in expected.items():
        p = parameters[key]
        for name, per_view in rates.items():
            drawn = getattr(p, name).view(3000, len(per_view)).float().mean(0)
            for view, probability in enumerate(per_view):
                assert abs(drawn[view] - probability) <= binomial_tolerance(probability, 3000), (key, name, view)
        n = len(p.flip)
        ranges = [(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]
        for index, (low, high) in enumerate(ranges):
            factors = p.jitter_factors[:, index]
            assert factors.min() >= low and factors.max() <= high, JITTER_OPERATIONS[index]
            assert abs(factors.mean() - (low + high) / 2) < 4.5 * (high - low) / math.sqrt(12 * n)
        assert p.blur_sigma.min() >= 0.1 and p.blur_sigma.max() <= 2.0
        assert abs(p.blur_sigma.mean() - 1.05) < 4.5 * 1.9 / math.sqrt(12 * n)
        assert torch.equal(p.jitter_order.sort(dim=1).values, torch.arange(4).expand(n, 4))
        for position in range(4):
            for operation in range(4):
                rate = (p.jitter_order[:, position] == operation).float().mean()
                assert abs(rate - 0.25) <= binomial_tolerance(0.25, n)


def test_views_match_torchvision_functional_ops():
    """With full-image crops of images already at the view size, every augmentation must equal torchvision's
    functional op with the same parameters (flip, the four jitter ops in the drawn order, grayscale, Gaussian blur,
    solarize, normalisation), view by view."""
    config = MultiCropConfig(global_image_size=24, local_image_size=24, num_local_views=2, global_crop_scale=(1, 1),
                             local_crop_scale=(1, 1), crop_ratio=(1, 1), grayscale_prob=0.3, local_solarize_prob=0.5,
                             image_mean=(0.4, 0.5, 0.6), image_std=(0.2, 0.25, 0.3))
    views = DeviceMultiCrop(config)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=generator)
    sizes = torch.tensor([[24, 24]] * 16)
    parameters = views.sample_parameters(16, view_generator(0, 0))
    output = views.render(images, sizes, parameters)
    mean, std = list(config.image_mean), list(config.image_std)
    operations = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    checked = {name: 0 for name in ("flip", "jitter", "grayscale", "blur", "solarize")}
    for key, count in (("pixel_values", 2), ("local_pixel_values", 2)):
        p = parameters[key]
        for row in range(len(p.flip)):
            image = images[row // count].float() / 255
            if p.flip[row]:
                image = F.horizontal_flip(image)
            if p.jitter[row]:
                for operation in p.jitter_order[row].tolist():
                    image = operations[operation](image, p.jitter_factors[row, operation].item())
            if p.grayscale[row]:
                image = F.rgb_to_grayscale(image, num_output_channels=3)
            if p.blur[row]:
                sigma = p.blur_sigma[row].item()
                image = F.gaussian_blur(image, kernel_size=[13, 13], sigma=[sigma, sigma])
            unsolarized = image
            if p.solarize[row]:
                image = F.solarize(image, threshold=128 / 255)
            for name in checked:
                checked[name] += int(getattr(p, name)[row])
            expected = F.normalize(image, mean, std)
            actual = output[key][row // count, row % count]
            # kornia's grayscale weighs red 0.299 where torchvision uses 0.2989; pixels within rounding of the
            # solarize threshold may fall on either side
            keep = (unsolarized - 128 / 255).abs() >= 1e-4 if p.solarize[row] else torch.ones_like(image).bool()
            torch.testing.assert_close(actual[keep], expected[keep], atol=2e-3, rtol=0, msg=f"{key} view {row}")
    assert all(value > 0 for value in checked.values()), checked


def smooth_image(height: int, width: int, seed: int = 0, cell: int = 8) -> torch.Tensor:
    """A smooth uint8 image (bicubic upsampling of a random grid of `cell`-pixel cells), as photos are at crop
    scale."""
    rng = np.random.default_rng(seed)
    coarse = PIL.Image.fromarray(rng.integers(0, 256, (height // cell, width // cell, 3), dtype=np.uint8))
    return F.pil_to_tensor(coarse.resize((width, height), PIL.Image.Resampling.BICUBIC))


def test_crop_and_resize_matches_torchvision_antialiased_resized_crop():
    """`roi_align` with adaptive sampling against `resized_crop(antialias=True)` (the CPU path's crop) for the same
    boxes: mean absolute difference below 0.6% of the range, and at most 80% of that of torchvision's own resize
    without antialiasing (measured: 0.2-0.3%, about 60%)."""
    config = MultiCropConfig(global_image_size=64, local_image_size=32, horizontal_flip_prob=0, color_jitter_prob=0,
                             grayscale_prob=0, global_blur_prob=0, local_blur_prob=0, global_solarize_prob=0,
                             image_mean=(0, 0, 0), image_std=(1, 1, 1))
    views = DeviceMultiCrop(config)
    image = smooth_image(186, 248, cell=16)
    canvas = image[None].expand(8, -1, -1, -1).contiguous()
    sizes = torch.tensor([[186, 248]] * 8)
    parameters = views.sample_parameters(8, view_generator(0, 0))
    output = views.render(canvas, sizes, parameters)
    for key, side in (("pixel_values", 64), ("local_pixel_values", 32)):
        boxes = views.crop_boxes(sizes, parameters[key]).long()
        rendered = output[key].flatten(0, 1)
        errors, plain_errors = [], []
        for row, (left, top, right, bottom) in enumerate(boxes.tolist()):
            crop = (image.float() / 255, top, left, bottom - top, right - left, [side, side])
            expected = F.resized_crop(*crop, antialias=True)
            errors.append((rendered[row] - expected).abs().mean())
            plain_errors.append((F.resized_crop(*crop, antialias=False) - expected).abs().mean())
        error, plain_error = torch.stack(errors).mean(), torch.stack(plain_errors).mean()
        assert error < 0.006 and error < 0.8 * plain_error, (key, error, plain_error)


# ----------------------------------------------------------------------------------------------- mixed sizes
def test_mixed_sizes_shapes_dtypes_and_no_padding_leak():
    """Images of different sizes and aspects in one batch: the collator's canvas and sizes, the views' shapes and
    dtype, and (each image one flat colour, no colour augmentation) every view is exactly its image's colour, so
    neither the padding nor another image is ever sampled."""
    config = MultiCropConfig(global_image_size=32, local_image_size=16, color_jitter_prob=0, grayscale_prob=0,
                             global_solarize_prob=0, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    shapes = [(20, 90), (64, 48), (7, 5), (33, 33)]
    colours = [(255, 0, 0), (0, 255, 0), (10, 20, 30), (200, 200, 200)]
    examples = [{"images": torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, h, w).contiguous()}
                for (h, w), colour in zip(shapes, colours)]
    batch = MultiCropCollator()(examples)
    assert batch["images"].shape == (4, 3, 64, 90) and batch["images"].dtype == torch.uint8
    assert batch["image_sizes"].tolist() == [list(shape) for shape in shapes]
    output = DeviceMultiCrop(config)(batch["images"], batch["image_sizes"], view_generator(0, 0))
    assert output["pixel_values"].shape == (4, 2, 3, 32, 32) and output["pixel_values"].dtype == torch.float32
    assert output["local_pixel_values"].shape == (4, 6, 3, 16, 16)
    for key in ("pixel_values", "local_pixel_values"):
        for index, colour in enumerate(colours):
            expected = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1) / 255
            torch.testing.assert_close(output[key][index], expected.expand_as(output[key][index]), atol=1e-5,
                                       rtol=0)


def reference_canvas(images: list[torch.Tensor]) -> torch.Tensor:
    """The collator's canvas built naively: zeros, each image at the top left, its last column then its last row
    (with the corner) repeated once."""
    height, width = max(image.shape[1] for image in images), max(image.shape[2] for image in images)
    canvas = torch.zeros(len(images), 3, height + 1, width + 1, dtype=torch.uint8)
    for slot, image in zip(canvas, images):
        h, w = image.shape[1:]
        slot[:, :h, :w] = image
        slot[:, :h, w] = image[:, :, -1]
        slot[:, h, : w + 1] = slot[:, h - 1, : w + 1]
    return canvas[:, :, :height, :width]


def _collate_in_worker(examples: list[dict]) -> dict:
    return MultiCropCollator()(examples)


@pytest.mark.parametrize("workers", [0, 1], ids=["main-process", "worker-shared-memory"])
def test_canvas_matches_naive_reference_channels_last(workers):
    """The canvas of mixed-size images (in a DataLoader worker: built in shared memory and sent to the main process)
    equals a naively built one, padding included, and is stored channels last; the views made from it equal the
    views made from a contiguous copy."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(20, 90), (64, 48), (7, 5), (64, 90), (1, 1)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in shapes]
    # as `pil_to_tensor` returns them: a (3, h, w) view of a (h, w, 3) array, and one contiguous (3, h, w) image
    examples = [{"images": image.permute(1, 2, 0).contiguous().permute(2, 0, 1)} for image in images[:-1]]
    examples.append({"images": images[-1]})
    loader = torch.utils.data.DataLoader([examples], batch_size=None, num_workers=workers,
                                         collate_fn=_collate_in_worker)
    batch = next(iter(loader))
    canvas = batch["images"]
    assert canvas.shape == (5, 3, 64, 90) and canvas.dtype == torch.uint8
    assert canvas.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(canvas, reference_canvas(images))
    assert batch["image_sizes"].tolist() == [list(shape) for shape in shapes]
    views = DeviceMultiCrop(MultiCropConfig(global_image_size=32, local_image_size=16))
    output = views(canvas, batch["image_sizes"], view_generator(0, 0))
    expected = views(canvas.contiguous(), batch["image_sizes"], view_generator(0, 0))
    assert all(torch.equal(output[key], expected[key]) for key in output)


def test_same_seed_same_views_other_step_or_process_other_views():
    views = DeviceMultiCrop(MultiCropConfig(global_image_size=32, local_image_size=16))
    images = torch.stack([smooth_image(48, 64, seed) for seed in range(4)])
    sizes = torch.tensor([[48, 64]] * 4)
    first = views(images, sizes, view_generator(7, 3, 0))
    again = views(images, sizes, view_generator(7, 3, 0))
    assert all(torch.equal(first[key], again[key]) for key in first)
    for other in (view_generator(7, 4, 0), view_generator(7, 3, 1), view_generator(7, 3, 0, 1), view_generator(8, 3)):
        different = views(images, sizes, other)
        assert not torch.allclose(first["pixel_values"], different["pixel_values"])


# ------------------------------------------------------------------------------------------------- decoding
def jpeg_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    F.to_pil_image(smooth_image(height, width, cell=16)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_reduced_size_jpeg_decode_and_bounded_resize():
    """A 1024 x 768 JPEG with the default views' target (184,320 pixels) is decoded at half size by libjpeg (512 x
    384, kept: within twice the target) and within 1.5 / 255 on average of a full decode averaged over 2 x 2 pixels
    (measured 0.9); PNGs and larger reductions are resized to the target; small images are kept."""
    transform = DecodeResizeTransform(MultiCropConfig())
    data = jpeg_bytes(1024, 768)
    reduced = decode_image(data, min_pixels=transform.min_pixels)
    assert reduced.size == (512, 384)
    full = decode_image(data).reduce(2)
    difference = np.abs(np.asarray(reduced, dtype=np.float64) - np.asarray(full, dtype=np.float64)).mean()
    assert difference < 1.5, difference  # of 255
    assert transform(reduced)["images"].shape == (3, 384, 512)
    assert transform(PIL.Image.new("RGB", (1024, 768)))["images"].shape == (3, 372, 496)  # a PNG-like full image
    assert transform(PIL.Image.new("RGB", (8000, 200)))["images"].shape[-1] == transform.max_side  # panorama
    assert transform(PIL.Image.new("L", (30, 20)))["images"].shape == (3, 20, 30)  # never upsampled; RGB


def encoded(image: PIL.Image.Image, format: str = "JPEG", **options) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return {"bytes": buffer.getvalue(), "path": None}


def test_read_jpeg_for_device_fails_as_decode_image_does(tmp_path):
    """What cannot be decoded anywhere fails in the worker with `decode_image`'s error kinds; what the worker should
    decode itself comes back as `None`; a JPEG for the device as its exact bytes."""
    from trainer.data import ImageDecodeError
    from trainer.data.decoding import read_jpeg_for_device

    good = encoded(F.to_pil_image(smooth_image(30, 40, cell=8)))
    (tmp_path / "good.jpg").write_bytes(good["bytes"])
    (tmp_path / "empty.jpg").write_bytes(b"")
    for value, kind in [({"bytes": None, "path": str(tmp_path / "missing.jpg")}, "missing"),
                        ({"bytes": None, "path": str(tmp_path / "empty.jpg")}, "empty"), (None, "missing")]:
        with pytest.raises(ImageDecodeError) as error:
            read_jpeg_for_device(value)
        assert error.value.kind == kind
    with pytest.raises(ImageDecodeError, match="decompression bomb") as error:
        read_jpeg_for_device(good, max_image_pixels=1000)
    assert error.value.kind == "too large"
    assert read_jpeg_for_device(good, max_pixels=1199) is None  # 1,200 pixels: decoded at reduced size by the worker
    assert read_jpeg_for_device({"bytes": b"not an image", "path": None}) is None  # `decode_image` says why
    for value in (good, {"bytes": None, "path": str(tmp_path / "good.jpg")}):
        data = read_jpeg_for_device(value, max_pixels=1200)
        assert data.dtype == np.uint8 and data.flags.writeable and data.tobytes() == good["bytes"]


def test_jpegs_decoded_on_the_device_match_the_workers_decode():
    """With `decode_on_device` the workers hand over the bytes of upright RGB and grayscale JPEGs within the size
    limit and decode the rest; the canvas rebuilt on the device (`append_device_decoded`) equals the one the workers
    build without it, padding included: exactly for the images kept at their size (both decoders are libjpeg-turbo),
    within 0.5 / 255 on average for the one resized (full decode then antialiased bilinear, against libjpeg's
    reduced decode then PIL's bilinear; measured 0.25). A truncated JPEG is skipped either way. Also with the
    workers' images in a canvas smaller than the JPEGs (their block is padded again)."""
    import datasets

    from trainer.data.device_views import append_device_decoded

    rotated = PIL.Image.Exif()
    rotated[PIL.Image.ExifTags.Base.Orientation] = 6
    truncated = encoded(F.to_pil_image(smooth_image(40, 48, cell=8)))["bytes"]
    values = {
        "rgb": encoded(F.to_pil_image(smooth_image(48, 64, cell=8)), quality=90),
        "gray": encoded(F.to_pil_image(smooth_image(30, 40, cell=8)).convert("L")),
        "resized": encoded(F.to_pil_image(smooth_image(200, 300, cell=40)), quality=95),  # 60,000 pixels
        "png": encoded(F.to_pil_image(smooth_image(20, 24, cell=8)), "PNG"),
        "cmyk": encoded(F.to_pil_image(smooth_image(36, 28, cell=8)).convert("CMYK")),
        "exif-rotated": encoded(F.to_pil_image(smooth_image(24, 40, cell=8)), exif=rotated),
        "too-large": encoded(F.to_pil_image(smooth_image(300, 400, cell=40))),  # over 16 x 5,120 pixels
        "truncated": {"bytes": truncated[: 2 * len(truncated) // 3], "path": None},
    }
    names = list(values)
    config = MultiCropConfig.from_lejepa_config(TINY)

    def batch_of(subset: list[str], on_device: bool) -> dict:
        dataset = datasets.Dataset.from_dict(
            {"image": [values[name] for name in subset], "label": [names.index(name) for name in subset]},
            features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
        )
        transform = DecodeResizeTransform(config, decode_on_device=on_device)
        prepared = prepare_pretraining_dataset(dataset, transform, "image", "label")
        return MultiCropCollator()([prepared[i] for i in range(len(subset))])

    for subset, on_host, on_device in [
        (names, ["png", "cmyk", "exif-rotated", "too-large"], ["rgb", "gray", "resized", "truncated"]),
        (["png", "rgb"], ["png"], ["rgb"]),
    ]:
        reference, batch = batch_of(subset, False), batch_of(subset, True)
        assert int(reference["num_skipped"]) == int("truncated" in subset) and int(batch["num_skipped"]) == 0
        assert [names[i] for i in batch["labels"]] == on_host + on_device
        canvas, sizes, failed = append_device_decoded(
            batch["images"], batch["image_sizes"], batch["jpeg_bytes"], DecodeResizeTransform(config),
            torch.device("cpu"),
        )
        assert failed == ([on_device.index("truncated")] if "truncated" in subset else [])
        labels = [label for label in batch["labels"].tolist() if names[label] != "truncated"]
        order = [reference["labels"].tolist().index(label) for label in labels]
        assert sizes.tolist() == reference["image_sizes"][order].tolist()
        assert canvas.shape == reference["images"].shape
        for row, label in enumerate(labels):
            difference = (canvas[row].to(torch.float64) - reference["images"][order[row]].to(torch.float64)).abs()
            if names[label] == "resized":
                assert sizes[row].tolist() == [58, 88] and difference.mean() < 0.5, difference.mean()
            else:
                assert difference.max() == 0, names[label]


def test_a_jpeg_failing_on_the_device_leaves_the_batch_with_its_label(tmp_path):
    """A JPEG whose header reads but whose data is cut short fails on the device: it leaves the batch with its label,
    and joins `num_skipped`."""
    import datasets

    good = encoded(F.to_pil_image(smooth_image(60, 80, cell=8)))
    values = [encoded(F.to_pil_image(smooth_image(20, 24, cell=8)), "PNG"), good,
              {"bytes": good["bytes"][: 2 * len(good["bytes"]) // 3], "path": None}, good]
    dataset = datasets.Dataset.from_dict(
        {"image": values, "label": [10, 11, 12, 13]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    config = MultiCropConfig.from_lejepa_config(TINY)
    prepared = prepare_pretraining_dataset(dataset, DecodeResizeTransform(config, decode_on_device=True), "image",
                                           "label")
    batch = MultiCropCollator()([prepared[i] for i in range(4)])
    assert batch["labels"].tolist() == [10, 11, 12, 13] and len(batch["jpeg_bytes"]) == 3
    trainer = LeJepaTrainer(model=LeJepaForPreTraining(TINY), args=LeJepaTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", augment_on_device=True))
    assert trainer._view_shapes(batch)[0] == 4  # FLOPs: every image the batch holds
    inputs = trainer._prepare_inputs(batch)
    assert inputs["labels"].tolist() == [10, 11, 13] and int(inputs["num_skipped"]) == 1
    assert inputs["pixel_values"].shape[0] == 3 and inputs["local_pixel_values"].shape[0] == 3


@pytest.mark.parametrize("decode_on_device", [False, True], ids=["decoded-by-workers", "decoded-on-device"])
def test_bad_images_are_skipped_and_counted_on_this_path(tmp_path, decode_on_device):
    """Corrupt and empty images among good JPEGs: the decode-only dataset drops them, the collator counts them and
    the trainer logs `skipped_images`, while the good ones train with views made on the device. With
    `decode_on_device` (and a DataLoader worker, so that the bytes cross processes) the truncated JPEG, whose header
    reads, fails on the device instead and is counted there."""
    import datasets

    good = jpeg_bytes(64, 48)
    values = [{"bytes": good, "path": None}] * 6 + [{"bytes": b"not an image", "path": None},
                                                     {"bytes": good[: 2 * len(good) // 3], "path": None}]
    dataset = datasets.Dataset.from_dict({"image": values}, features=datasets.Features({"image": datasets.Image()}))
    config = MultiCropConfig.from_lejepa_config(TINY)
    prepared = prepare_pretraining_dataset(
        dataset, DecodeResizeTransform(config, decode_on_device=decode_on_device), "image"
    )
    collator = MultiCropCollator()
    batch = collator([prepared[i] for i in range(8)])
    if decode_on_device:
        assert "images" not in batch and len(batch["jpeg_bytes"]) == 7 and int(batch["num_skipped"]) == 1
    else:
        assert batch["images"].shape == (6, 3, 48, 64) and int(batch["num_skipped"]) == 2
    args = LeJepaTrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=1, logging_steps=1,
                                   per_device_train_batch_size=8, report_to="none",
                                   dataloader_num_workers=int(decode_on_device), augment_on_device=True,
                                   save_strategy="no", disable_tqdm=True)
    trainer = LeJepaTrainer(model=LeJepaForPreTraining(TINY), args=args, train_dataset=prepared,
                            data_collator=MultiCropCollator(return_labels=False))
    trainer.train()
    log = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert log["skipped_images"] == 2 and log["images_per_second"] > 0 and math.isfinite(log["loss"])


# -------------------------------------------------------------------------------------------------- trainer
def test_option_resolution_and_error_when_off(tmp_path):
    args = LeJepaTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert resolve_augment_on_device(args) is False  # auto on a CPU: off when the view size is unknown,
    assert resolve_augment_on_device(args, global_image_size=224) is False  # and for large views,
    assert resolve_augment_on_device(args, global_image_size=CPU_DEVICE_VIEWS_MAX_SIZE + 1) is False
    assert resolve_augment_on_device(args, global_image_size=CPU_DEVICE_VIEWS_MAX_SIZE) is True  # on for small ones
    assert resolve_augment_on_device(args, global_image_size=32) is True
    assert resolve_augment_on_device(args, False, global_image_size=32) is False
    assert resolve_augment_on_device(args, True) is True
    args.augment_on_device = True
    assert resolve_augment_on_device(args) is True
    trainer = LeJepaTrainer(model=LeJepaForPreTraining(TINY), args=LeJepaTrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", augment_on_device=False))
    batch = {"images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "image_sizes": torch.tensor([[8, 8], [8, 8]])}
    with pytest.raises(ValueError, match="augment_on_device"):
        trainer._prepare_inputs(batch)


def test_settings_the_device_path_does_not_make_are_refused():
    refused = r"resized bilinearly .* `interpolation='bicubic'` was asked for.*`augment_on_device=False`"
    with pytest.raises(ValueError, match=refused):
        DeviceMultiCrop(MultiCropConfig(interpolation="bicubic"))
    with pytest.raises(ValueError, match=r"`hue` must be in \[0, 0.5\]"):
        DeviceMultiCrop(MultiCropConfig(hue=0.6))


def load_bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu_for_flops", REPO_ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floating_point_ops_count_every_view_once_per_shape(tmp_path):
    """3 x the analytic forward FLOPs of `benchmarks/bench_gpu.py` (an independent formula, all views at their own
    resolution), for batches of views and of uint8 images alike, counted once per shape."""
    config = LeJepaConfig.from_preset("vit-tiny-test", num_local_views=4)
    trainer = LeJepaTrainer(
        model=LeJepaForPreTraining(config), augment_on_device=True,
        args=LeJepaTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none"),
    )
    expected = 3 * load_bench_gpu().vit_forward_flops(config) * 5
    views = {"pixel_values": torch.zeros(5, 2, 3, 32, 32), "local_pixel_values": torch.zeros(5, 4, 3, 16, 16)}
    assert trainer.floating_point_ops(views) == pytest.approx(expected, rel=1e-9)
    images = {"images": torch.zeros(5, 3, 40, 40, dtype=torch.uint8), "image_sizes": torch.full((5, 2), 40)}
    assert trainer.floating_point_ops(images) == pytest.approx(expected, rel=1e-9)
    global_only = 3 * 5 * 2 * load_bench_gpu().vit_forward_flops(
        LeJepaConfig.from_preset("vit-tiny-test", num_local_views=0)) / 2
    assert trainer.floating_point_ops({"pixel_values": views["pixel_values"]}) == pytest.approx(global_only)
    assert len(trainer._training_flops._per_image) == 2  # one count per set of view shapes


# -------------------------------------------------------------------------------------------- two processes
@pytest.mark.slow
def test_two_processes_draw_different_views(tmp_path):
    """A real 2-process `accelerate launch` (gloo): every process gets the same images, yet draws other views, each
    exactly those of `view_generator(seed, step, process_index)` recomputed here in one process."""
    from test_distributed import launch

    launch("device_views", tmp_path, 2)
    ranks = [torch.load(tmp_path / f"views_rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert [r["num_processes"] for r in ranks] == [2, 2] and [r["process_index"] for r in ranks] == [0, 1]
    assert torch.equal(ranks[0]["images"], ranks[1]["images"])
    assert not torch.allclose(ranks[0]["pixel_values"], ranks[1]["pixel_values"])
    views = DeviceMultiCrop.from_lejepa_config(LeJepaConfig.from_preset("vit-tiny-test", num_local_views=2))
    for rank, result in enumerate(ranks):
        expected = views(result["images"], result["image_sizes"], view_generator(result["seed"], 0, rank))
        torch.testing.assert_close(result["pixel_values"], expected["pixel_values"])
        torch.testing.assert_close(result["local_pixel_values"], expected["local_pixel_values"])


@pytest.mark.parametrize("obj", [DeviceMultiCrop, DecodeResizeTransform], ids=lambda obj: obj.__name__)
def test_docstring_examples_run(obj):
    import doctest

    text = obj.__doc__.replace("```python", "").replace("```", "")  # the Markdown fences are not output
    test = doctest.DocTestParser().get_doctest(text, {}, obj.__name__, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert test.examples and runner.summarize(verbose=False).failed == 0
