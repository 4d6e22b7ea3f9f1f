"""The grain source of a split for `data.source`: which class of sr_jax.data.sources (or the
TFDS source) reads it, with the few-shot limit applied.

Kept apart from sources.py so that the source classes and the TFDS reader (which builds on
them) never import each other.
"""

from __future__ import annotations

from typing import Any

from sr_jax.data import sources
from sr_jax.data.sources import FolderSource, ImageSource, PairedFolderSource


SPLITS = ("train", "val", "eval")


def make_source(data_config: Any, split: str, scale: int = 1) -> Any:
  """The grain source of `split` ('train', 'val' or 'eval') for `data.source`.

  Training sources drop images smaller than data.crop_size (data.small_images); evaluation
  sources keep every image. data.val_images = N > 0 carves a validation split out of the
  training images: the last N of them (in the source's order) form 'val' and 'train' never
  sees them, so hyper-parameters can be chosen without touching the evaluation images.
  data.num_train_images > 0 then keeps only the first N training images (the few-shot
  setting). `scale` is the LR:HR ratio of paired data (degradation.scale).
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; valid splits: {list(SPLITS)}.")
  if split == "eval":
    return _make_source(data_config, "eval", scale)
  source = _make_source(data_config, "train", scale)
  held = int(data_config.get("val_images", 0))
  if held >= len(source):
    raise ValueError(f"data.val_images={held} holds out every one of the {len(source)} "
                     "training images; lower it so that some are left to train on.")
  if split == "val":
    if held <= 0:
      raise ValueError("data.eval_split='val' (or a validation source) needs data.val_images "
                       "> 0: the number of training images held out for validation.")
    return Records(source, len(source) - held, len(source))
  source = Records(source, 0, len(source) - held) if held > 0 else source
  limit = data_config.num_train_images
  if 0 < limit < len(source):
    source = Records(source, 0, limit)
  return source


class Records:
  """Records [start, stop) of a source: a validation split, or the first N training images."""

  def __init__(self, source: Any, start: int, stop: int):
    self.source, self.start, self.stop = source, int(start), int(stop)
    self.names = tuple(source.names[i] for i in range(self.start, self.stop))

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(f"Record {index} of {len(self)}.")
    return self.source[self.start + index]

  def sizes(self) -> list[tuple[int, int]]:
    """(height, width) of these records (their source must say: in-memory or folder images)."""
    return self.source.sizes()[self.start:self.stop]

  def __repr__(self) -> str:
    return f"Records([{self.start}, {self.stop}) of {self.source!r})"


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
