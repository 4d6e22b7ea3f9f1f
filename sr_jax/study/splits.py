"""The study's fixed split of the images: base pre-training, fine-tuning, validation, test.

A folder source's training folder (data.train_dir) is shuffled once with a fixed seed and cut
into study.base_images (the base pre-trains on these), study.train_images (each task fine-tunes
on these) and study.val_images (learning rates are chosen on these); the evaluation folder
(data.eval_dir, the first study.test_images of it when > 0) is the reported test set; with
no evaluation folder the next study.test_images of the same shuffle are (one folder of a new
domain, e.g. manga pages, split once). The splits are materialised as folders of symbolic
links in W/splits/, the training folder holding the validation images last so that
data.val_images carves exactly them out, and written to W/splits.json. With the embedded
photos (the default, needing no files) the last study.val_images training photos are the
validation split and the held-out photos the test set.

A test image that is also a training, validation or base image (the same file, or the same
name in both folders) is an error: the reported numbers must come from images no choice saw.
A general set given as a folder (eval.general_set: the original domain, what a transfer
forgets) is linked too, its first study.general_images images (0 = all), and must not overlap
the others either.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import ml_collections
import numpy as np

from sr_jax.data import sources
from sr_jax.util import jsonfile

SHUFFLE_SEED = 0


@dataclasses.dataclass(frozen=True)
class Splits:
  """Image names per split, and the data settings that read them."""
  base: tuple[str, ...]
  train: tuple[str, ...]
  val: tuple[str, ...]
  test: tuple[str, ...]
  data: dict[str, Any]  # Overrides of config.data for the study's runs.
  base_data: dict[str, Any]  # Overrides of config.base for the base's pre-training.
  general: tuple[str, ...] = ()  # The general set's images (eval.general_set as a folder).
  general_set: str = ""  # The folder of their links: the runs' eval.general_set.

  def to_json(self) -> dict[str, Any]:
    out = {"base": list(self.base), "train": list(self.train), "val": list(self.val),
           "test": list(self.test)}
    if self.general:
      out["general"] = list(self.general)
    return out


def _link_folder(folder: pathlib.Path, files: list[pathlib.Path], prefixes: list[str]) -> None:
  """`folder` holding one symbolic link per file, named '<prefix><index>_<name>' (sorted order =
  the given order); an existing folder is rebuilt."""
  folder.mkdir(parents=True, exist_ok=True)
  for old in folder.iterdir():
    old.unlink()
  for i, (path, prefix) in enumerate(zip(files, prefixes)):
    (folder / f"{prefix}{i:03d}_{path.name}").symlink_to(path.resolve())


def _check_disjoint(test: list[pathlib.Path], seen: list[pathlib.Path], what: str = "test images",
                    key: str = "data.eval_dir") -> None:
  same_file = {p.resolve() for p in test} & {p.resolve() for p in seen}
  same_name = {p.name for p in test} & {p.name for p in seen}
  if same_file or same_name:
    raise ValueError(f"The study's {what} overlap its other images (training, validation, "
                     f"base or test): {sorted(str(x) for x in same_file | same_name)[:5]}. Use "
                     f"disjoint folders for data.train_dir and {key}.")


def _folder_splits(config: ml_collections.ConfigDict, workdir: str) -> Splits:
  s = config.study
  files = sources.list_image_files(config.data.train_dir)
  carve = not config.data.eval_dir  # One folder: the test images are cut from it too.
  if carve and s.test_images <= 0:
    raise ValueError("data.eval_dir is empty, so the test images come from data.train_dir: "
                     "set study.test_images to how many (or give a folder of test images).")
  need = s.base_images + s.train_images + s.val_images
  total = need + (s.test_images if carve else 0)
  if total > len(files):
    raise ValueError(f"study.base_images + train_images + val_images"
                     f"{' + test_images' if carve else ''} = {total}, but data.train_dir="
                     f"{config.data.train_dir} holds {len(files)} images; lower them or add "
                     "images.")
  order = [files[i] for i in np.random.default_rng(SHUFFLE_SEED).permutation(len(files))]
  base = order[:s.base_images]
  train = order[s.base_images:s.base_images + s.train_images]
  val = order[s.base_images + s.train_images:need]
  if carve:
    test = order[need:total]
  else:
    test = sources.list_image_files(config.data.eval_dir)
    test = test[:s.test_images] if s.test_images > 0 else test
  _check_disjoint(test, base + train + val)
  root = pathlib.Path(workdir) / "splits"
  _link_folder(root / "train", train + val, ["t"] * len(train) + ["v"] * len(val))
  _link_folder(root / "test", test, ["e"] * len(test))
  base_data = {}
  if base:
    _link_folder(root / "base", base, ["b"] * len(base))
    base_data = {"train_dir": str(root / "base")}
  data = {"source": "folder", "train_dir": str(root / "train"), "eval_dir": str(root / "test"),
          "val_images": len(val), "num_train_images": 0}
  names = lambda paths: tuple(p.name for p in paths)  # pylint: disable=unnecessary-lambda-assignment
  general, general_set = [], ""
  if config.eval.general_set and config.eval.general_set != "embedded":
    general = sources.list_image_files(config.eval.general_set)
    general = general[:s.general_images] if s.general_images > 0 else general
    _check_disjoint(general, base + train + val + test, "general set (eval.general_set)",
                    "eval.general_set")
    _link_folder(root / "general", general, ["g"] * len(general))
    general_set = str(root / "general")
  return Splits(names(base), names(train), names(val), names(test), data, base_data,
                names(general), general_set)


def _embedded_splits(config: ml_collections.ConfigDict) -> Splits:
  s = config.study
  train, test = sources.EMBEDDED_SETS[config.data.embedded_set]
  if s.val_images >= len(train):
    raise ValueError(f"study.val_images={s.val_images} leaves none of the {len(train)} embedded "
                     "training photos to fine-tune on; lower it.")
  cut = len(train) - s.val_images
  data = {"source": "embedded", "val_images": s.val_images, "num_train_images": 0}
  return Splits((), tuple(train[:cut]), tuple(train[cut:]), tuple(test), data, {})


def make_splits(config: ml_collections.ConfigDict, workdir: str) -> Splits:
  """The study's splits (see the module docstring), written to workdir/splits.json."""
  if config.data.source == "folder":
    splits = _folder_splits(config, workdir)
  elif config.data.source == "embedded":
    splits = _embedded_splits(config)
  else:
    raise ValueError(f"The study reads data.source 'folder' or 'embedded', not "
                     f"{config.data.source!r}.")
  if not splits.train:
    raise ValueError("The study's training split is empty: raise study.train_images.")
  jsonfile.write(os.path.join(workdir, "splits.json"), splits.to_json())
  return splits
