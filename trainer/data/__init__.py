"""
The data side of LeJEPA pretraining: loading image datasets, robust decoding, the multi-crop views and the collator.

The path of one image is

`datasets` row (`{"bytes", "path"}`, undecoded) -> `decode_image` -> `to_rgb_image` -> `MultiCropTransform`
(`Vg` global and `Vl` local views) -> `MultiCropCollator` (`(B, Vg, C, H, W)` and `(B, Vl, C, h, w)`).

`MultiCropBatchTransform` ties decoding and the transform together for `datasets.Dataset.with_transform` and
`datasets.IterableDataset.map`; `prepare_pretraining_dataset` attaches it to a dataset. Images that fail to decode are
skipped and counted by a `BadSampleCounter`, which stops the run with a clear error only when too many fail. With
`augment_on_device`, the workers only decode and resize each image (`DecodeResizeTransform`) and `DeviceMultiCrop`
makes the views on the training device; with `decode_on_device` too, the workers only read the bytes of JPEGs, which
are decoded on the device (`append_device_decoded`).

The modules, in the order of that path:

- `decoding`: `decode_image`, `to_rgb_image`, `ImageDecodeError`, `read_jpeg_for_device`;
- `arrays`: images that are not 8-bit RGB (16-bit, CT, multi-band, arrays) read with their values and channels
  (`read_image_array`), and the run's pixel format, channels and per-channel statistics from a sample
  (`inspect_images`, `ImageFormat`; `sources.inspect_dataset_images` on a dataset);
- `views`: `MultiCropConfig`, `MultiCropTransform`, `DecodeResizeTransform` (views made in DataLoader workers);
- `device_views`: `DeviceMultiCrop`, `view_generator` (views made on the training device), `decode_jpegs`,
  `append_device_decoded` (JPEGs decoded there);
- `collator`: `BadSampleCounter`, `MultiCropBatchTransform`, `FixedViewBatchTransform`, `MultiCropCollator`;
- `sources`: `load_pretraining_dataset`, `prepare_pretraining_dataset`, `check_num_shards`, the validation set;
- `builtin`: the offline datasets `BUILTIN_DATASETS` (`load_builtin_dataset`, `load_photos_dataset`,
  `load_digits_dataset`).
"""

from .arrays import ImageFormat, inspect_images, read_image_array
from .builtin import BUILTIN_DATASETS, BUILTIN_PHOTOS, load_builtin_dataset, load_digits_dataset, load_photos_dataset
from .collator import BadSampleCounter, FixedViewBatchTransform, MultiCropBatchTransform, MultiCropCollator
from .decoding import ImageDecodeError, decode_image, to_rgb_image
from .device_views import DeviceMultiCrop, view_generator
from .sources import (
    check_num_shards,
    detect_image_column,
    detect_label_column,
    inspect_dataset_images,
    load_pretraining_dataset,
    prepare_pretraining_dataset,
    prepare_validation_dataset,
    sample_examples,
    split_validation_dataset,
    take_validation_examples,
)
from .views import DecodeResizeTransform, MultiCropConfig, MultiCropTransform

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_PHOTOS",
    "BadSampleCounter",
    "DecodeResizeTransform",
    "DeviceMultiCrop",
    "FixedViewBatchTransform",
    "ImageDecodeError",
    "ImageFormat",
    "MultiCropBatchTransform",
    "MultiCropCollator",
    "MultiCropConfig",
    "MultiCropTransform",
    "check_num_shards",
    "decode_image",
    "detect_image_column",
    "detect_label_column",
    "inspect_dataset_images",
    "inspect_images",
    "load_builtin_dataset",
    "load_digits_dataset",
    "load_photos_dataset",
    "load_pretraining_dataset",
    "prepare_pretraining_dataset",
    "prepare_validation_dataset",
    "read_image_array",
    "sample_examples",
    "split_validation_dataset",
    "take_validation_examples",
    "to_rgb_image",
    "view_generator",
]
