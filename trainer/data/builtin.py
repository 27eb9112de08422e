"""
The built-in labelled datasets, made offline and deterministically from files of installed packages: scikit-learn's
digits and crops of 17 photographs (`BUILTIN_DATASETS`, `load_builtin_dataset`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image

from .decoding import decode_image, to_rgb_image


def load_digits_dataset(image_size: int = 32, seed: int = 0, test_fraction: float = 0.2) -> datasets.DatasetDict:
    """
    The built-in dataset: scikit-learn's 1,797 handwritten digits (8x8, 0..16 grey levels) as RGB images, for demos,
    tests and linear probes without a network.

    Values are scaled from 0..16 to 0..255, then upsampled to `image_size` with bicubic interpolation. The split is
    stratified by class and fixed by `seed`.

    Args:
        image_size (`int`, defaults to 32): side of the images.
        seed (`int`, defaults to 0): seed of the train/test split.
        test_fraction (`float`, defaults to 0.2): fraction of the images in the "test" split.

    Returns:
        `datasets.DatasetDict`: "train" and "test" splits with columns "image" (`datasets.Image`) and "label"
        (`datasets.ClassLabel` with names "0" to "9").
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "The built-in digits ship with scikit-learn: `pip install 'lejepa-hf[train]'` (or `[eval]`, or `pip "
            "install scikit-learn`)."
        ) from error

    if image_size < 1:
        raise ValueError(f"`image_size` must be positive, got {image_size}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
    digits = load_digits()
    pixels = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    indices = np.arange(len(labels))
    train_indices, test_indices = train_test_split(
        indices, test_size=test_fraction, random_state=seed, stratify=labels
    )
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(digit) for digit in range(10)])}
    )

    def build(split_indices: np.ndarray) -> datasets.Dataset:
        images = [
            PIL.Image.fromarray(pixels[index])
            .resize((image_size, image_size), PIL.Image.Resampling.BICUBIC)
            .convert("RGB")
            for index in split_indices
        ]
        return datasets.Dataset.from_dict(
            {"image": images, "label": labels[split_indices].tolist()}, features=features
        )

    return datasets.DatasetDict({"train": build(train_indices), "test": build(test_indices)})


# The photographs of the built-in photos dataset, as (package, file inside the package, class name). All ship inside
# the wheels of scikit-image (`skimage/data`; only files of the wheel itself, never the ones `skimage.data` fetches on
# first use), scikit-learn and matplotlib: nothing is downloaded. Eleven are colour photographs; the last six are grey
# photographs (textures of brick, grass and gravel among them), read as RGB.
BUILTIN_PHOTOS = (
    ("skimage.data", "astronaut.png", "astronaut"),
    ("skimage.data", "chelsea.png", "chelsea"),
    ("skimage.data", "coffee.png", "coffee"),
    ("skimage.data", "hubble_deep_field.jpg", "hubble_deep_field"),
    ("skimage.data", "ihc.png", "ihc"),
    ("skimage.data", "motorcycle_left.png", "motorcycle"),
    ("skimage.data", "retina.jpg", "retina"),
    ("skimage.data", "rocket.jpg", "rocket"),
    ("sklearn.datasets", "images/china.jpg", "china"),
    ("sklearn.datasets", "images/flower.jpg", "flower"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "grace_hopper"),
    ("skimage.data", "brick.png", "brick"),
    ("skimage.data", "grass.png", "grass"),
    ("skimage.data", "gravel.png", "gravel"),
    ("skimage.data", "camera.png", "camera"),
    ("skimage.data", "coins.png", "coins"),
    ("skimage.data", "moon.png", "moon"),
)


def _read_packaged_photo(package: str, filename: str) -> PIL.Image.Image:
    """Reads one photograph that ships inside an installed package, as RGB."""
    import importlib.resources

    try:
        resource = importlib.resources.files(package).joinpath(filename)
        data = resource.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as error:
        distribution = {"skimage.data": "scikit-image", "sklearn.datasets": "scikit-learn"}.get(package, package)
        raise FileNotFoundError(
            f"The built-in photos need {filename!r} from the {package!r} package, which is not installed or lacks "
            f"it ({error}). Install it with `pip install 'lejepa-hf[train]'` (or `[eval]`, or `pip install "
            f"{distribution}`), or use `--builtin_dataset digits`."
        ) from error
    return to_rgb_image(decode_image(data))


def _photo_crop(
    cell: tuple[int, int, int, int], rng: np.random.Generator, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """A random crop box `(left, top, right, bottom)` inside `cell` (a box of the photo): area a uniform fraction in
    `scale` of the cell's, aspect ratio log-uniform in [3/4, 4/3], position uniform (shrunk to fit if needed)."""
    cell_left, cell_top, cell_right, cell_bottom = cell
    width, height = cell_right - cell_left, cell_bottom - cell_top
    area = rng.uniform(*scale) * width * height
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    crop_width = min(width, max(1, round(math.sqrt(area * ratio))))
    crop_height = min(height, max(1, round(math.sqrt(area / ratio))))
    left = cell_left + int(rng.integers(0, width - crop_width + 1))
    top = cell_top + int(rng.integers(0, height - crop_height + 1))
    return left, top, left + crop_width, top + crop_height


def load_photos_dataset(
    image_size: int = 64,
    train_crops_per_photo: int = 64,
    test_crops_per_photo: int = 32,
    grid_size: int = 4,
    test_cells_per_photo: int = 4,
    crop_scale: tuple[float, float] = (0.25, 1.0),
    seed: int = 0,
    photo_files: Sequence[str | os.PathLike] | None = None,
) -> datasets.DatasetDict:
    """
    The built-in photos dataset: crops of the 17 real photographs listed in `BUILTIN_PHOTOS` (astronaut, cat, coffee,
    deep field, tissue, motorcycle, retina, rocket, palace, flower, portrait, and grey brick, grass, gravel, camera
    man, coins, moon), which ship inside scikit-image, scikit-learn and matplotlib, so it loads with no network; or
    the same task on other photographs (`photo_files`).

    The labelled task is *which photograph a crop comes from*, on held-out parts of the photographs. Each photo is
    cut into a `grid_size` x `grid_size` grid of cells; `test_cells_per_photo` cells of each photo (drawn with
    `seed`) are held out for the "test" split, the other cells give the "train" split, so no test crop shares a
    pixel with a training crop. Every crop is a fixed, seeded random box inside one cell of its split (cell drawn
    uniformly; the box's area a uniform fraction in `crop_scale` of the cell's, aspect ratio in [3/4, 4/3]),
    resized to `image_size` x `image_size` (bicubic).

    Args:
        image_size (`int`, defaults to 64): side of the crops, in pixels.
        train_crops_per_photo (`int`, defaults to 64): crops of each photo in the "train" split.
        test_crops_per_photo (`int`, defaults to 32): crops of each photo in the "test" split.
        grid_size (`int`, defaults to 4): cells per side of a photo's grid.
        test_cells_per_photo (`int`, defaults to 4): cells of each photo held out for the "test" split.
        crop_scale (`tuple[float, float]`, defaults to `(0.25, 1.0)`): range of a crop's area, as a fraction of its
            cell's.
        seed (`int`, defaults to 0): seed of the held-out cells and of the crops.
        photo_files (`Sequence[str | os.PathLike]`, *optional*): image files to use instead of `BUILTIN_PHOTOS`,
            one class each, named after the file's stem.

    Returns:
        `datasets.DatasetDict`: "train" and "test" splits with columns "image" (`datasets.Image`, RGB) and "label"
        (`datasets.ClassLabel` named after the photographs), in a seeded random order.

    Raises:
        `FileNotFoundError`: when a package that ships the photographs is missing (the message names it).
    """
    if image_size < 1:
        raise ValueError(f"`image_size` must be positive, got {image_size}.")
    if min(train_crops_per_photo, test_crops_per_photo) < 1:
        raise ValueError(
            f"Crops per photo must be positive, got {train_crops_per_photo} (train) and {test_crops_per_photo} (test)."
        )
    if not 0 < test_cells_per_photo < grid_size**2:
        raise ValueError(
            f"`test_cells_per_photo` must be between 1 and {grid_size**2 - 1} (grid_size**2 - 1), got "
            f"{test_cells_per_photo}."
        )
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"`crop_scale` must satisfy 0 < low <= high <= 1, got {tuple(crop_scale)}.")
    if photo_files is None:
        photos = [_read_packaged_photo(package, filename) for package, filename, _ in BUILTIN_PHOTOS]
        names = [name for _, _, name in BUILTIN_PHOTOS]
    else:
        photos = [to_rgb_image(decode_image(Path(path).read_bytes())) for path in photo_files]
        names = [Path(path).stem for path in photo_files]
        if len(set(names)) != len(names):
            raise ValueError(f"`photo_files` must have distinct file names (one class each), got {names}.")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    split_cells = _split_photo_cells(photos, grid_size, test_cells_per_photo, np.random.default_rng([seed, 0]))

    def build(split: str, stream: int, crops_per_photo: int) -> datasets.Dataset:
        rng = np.random.default_rng([seed, stream])
        images, labels = [], []
        for label, (photo, cells) in enumerate(zip(photos, split_cells[split])):
            for _ in range(crops_per_photo):
                cell = cells[int(rng.integers(len(cells)))]
                box = _photo_crop(cell, rng, crop_scale)
                images.append(photo.resize((image_size, image_size), PIL.Image.Resampling.BICUBIC, box=box))
                labels.append(label)
        order = rng.permutation(len(images))  # photos mixed, so that the first rows are a fair subset
        return datasets.Dataset.from_dict(
            {"image": [images[i] for i in order], "label": [labels[i] for i in order]}, features=features
        )

    return datasets.DatasetDict(
        {"train": build("train", 1, train_crops_per_photo), "test": build("test", 2, test_crops_per_photo)}
    )


def _split_photo_cells(
    photos: list[PIL.Image.Image], grid_size: int, test_cells_per_photo: int, rng: np.random.Generator
) -> dict[str, list[list[tuple[int, int, int, int]]]]:
    """Each photo cut into a `grid_size` x `grid_size` grid of cell boxes `(left, top, right, bottom)`, of which
    `test_cells_per_photo` (drawn with `rng`) go to "test" and the others to "train": per split, one list of cells per
    photo."""
    split_cells: dict[str, list[list[tuple[int, int, int, int]]]] = {"train": [], "test": []}
    for photo in photos:
        width, height = photo.size
        xs = np.linspace(0, width, grid_size + 1).round().astype(int)
        ys = np.linspace(0, height, grid_size + 1).round().astype(int)
        cells = [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(grid_size) for i in range(grid_size)]
        held_out = set(rng.choice(len(cells), size=test_cells_per_photo, replace=False).tolist())
        split_cells["test"].append([cell for index, cell in enumerate(cells) if index in held_out])
        split_cells["train"].append([cell for index, cell in enumerate(cells) if index not in held_out])
    return split_cells


@dataclass(frozen=True)
class BuiltinDataset:
    """A labelled image dataset that ships inside installed packages: its loader, the side of its images, its name."""

    load: Callable[..., datasets.DatasetDict]
    image_size: int
    description: str


# The built-in datasets, by the name that `--builtin_dataset` takes.
BUILTIN_DATASETS = {
    "photos": BuiltinDataset(load_photos_dataset, 64, "built-in photos (crops of 17 photographs, held-out cells)"),
    "digits": BuiltinDataset(load_digits_dataset, 32, "scikit-learn digits (8x8, upsampled)"),
}


def load_builtin_dataset(name: str, image_size: int | None = None, seed: int = 0) -> datasets.DatasetDict:
    """
    One of `BUILTIN_DATASETS` ("photos", the default of the scripts, or "digits"), with "train" and "test" splits of
    labelled RGB images, built offline and deterministically from `seed`.

    Args:
        name (`str`): `"photos"` (`load_photos_dataset`) or `"digits"` (`load_digits_dataset`).
        image_size (`int`, *optional*): side of the images; defaults to the dataset's own (64 and 32).
        seed (`int`, defaults to 0): seed of the crops or of the split.
    """
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"Unknown built-in dataset {name!r}; choose one of {', '.join(BUILTIN_DATASETS)}.")
    builtin = BUILTIN_DATASETS[name]
    return builtin.load(image_size=image_size or builtin.image_size, seed=seed)

