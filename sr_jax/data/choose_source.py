"""The grain source of a split for `data.source`: which class of sr_jax.data.sources (or the
TFDS source) reads it, with the few-shot limit applied.

Kept apart from sources.py so that the source classes and the TFDS reader (which builds on
them) never import each other.
"""

from __future__ import annotations

from typing import Any

from sr_jax.data import sources
from sr_jax.data.sources import FolderSource, ImageSource, PairedFolderSource


def make_source(data_config: Any, split: str, scale: int = 1) -> Any:
  """The grain source of `split` ('train' or 'eval') for `data.source`.

  Training sources drop images smaller than data.crop_size (data.small_images); evaluation
  sources keep every image; data.num_train_images > 0 keeps only the first N training images
  (the few-shot setting). `scale` is the LR:HR ratio of paired data (degradation.scale).
  """
  source = _make_source(data_config, split, scale)
  limit = data_config.num_train_images
  if split == "train" and 0 < limit < len(source):
    source = FirstRecords(source, limit)
  return source


class FirstRecords:
  """The first `count` records of a source: few-shot fine-tuning on N images."""

  def __init__(self, source: Any, count: int):
    self.source, self.count = source, int(count)
    self.names = tuple(source.names[i] for i in range(self.count))

  def __len__(self) -> int:
    return self.count

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self.count:
      raise IndexError(f"Record {index} of {self.count}.")
    return self.source[index]

  def __repr__(self) -> str:
    return f"FirstRecords({self.count} of {self.source!r})"


def _make_source(data_config: Any, split: str, scale: int) -> Any:
  if split not in ("train", "eval"):
    raise ValueError(f"Unknown split {split!r}; valid splits: ['train', 'eval'].")
  kind, train = data_config.source, split == "train"
  crop = data_config.crop_size if train else 0
  if kind == "embedded":
    return ImageSource(sources.load_images(data_config, split))
  if kind == "tfds":
    # Imported here: grain workers of the other sources need not load tensorflow_datasets.
    from sr_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
    if not data_config.tfds_name:
      raise ValueError("data.source='tfds' needs data.tfds_name (e.g. 'div2k/bicubic_x4').")
    return tfds_source.load_tfds_source(
        data_config.tfds_name,
        data_config.tfds_train_split if train else data_config.tfds_eval_split,
        data_config.tfds_data_dir, data_config.tfds_hr_key, data_config.tfds_lr_key)
  if kind not in ("folder", "paired"):
    raise ValueError(f"Unknown data.source {kind!r}; valid: "
                     "['embedded', 'folder', 'paired', 'tfds'].")
  gt_dir = _required_dir(data_config, f"{split}_dir", kind)
  recursive = bool(data_config.get("recursive", False))
  skip_bad = bool(data_config.get("skip_bad_images", False))
  if kind == "folder":
    if train:
      return FolderSource.for_training(gt_dir, crop, data_config.small_images, skip_bad,
                                       recursive)
    return FolderSource(sources.list_image_files(gt_dir, recursive),
                        gt_dir if recursive else None)
  lq_dir = _required_dir(data_config, f"{split}_lq_dir", kind)
  return PairedFolderSource(lq_dir, gt_dir, scale, crop, data_config.small_images,
                            skip_bad if train else None, recursive)


def _required_dir(data_config: Any, key: str, kind: str) -> str:
  directory = getattr(data_config, key)
  if not directory:
    raise ValueError(f"data.source={kind!r} needs data.{key} "
                     f"(e.g. --config.data.{key}=/path/to/images).")
  return directory
