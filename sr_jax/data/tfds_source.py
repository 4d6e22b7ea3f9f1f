"""Random access to a TFDS-prepared image dataset (e.g. DIV2K) from its array_record files.

Lets training read a dataset that TFDS has already prepared in a local folder, for example
`div2k/bicubic_x4` (features 'hr' and 'lr', splits 'train' (800) and 'validation' (100)).
Nothing here downloads: the dataset must be built beforehand, on a machine with internet (or
with the manual files), as array_record shards:

  tfds build div2k/bicubic_x4 --file_format=array_record --data_dir=/data/tfds

(the tfds 4.9 CLI imports apache-beam; without it, call
`tfds.builder('div2k/bicubic_x4', data_dir=..., file_format='array_record').download_and_prepare()`)
and point `data.tfds_data_dir` at that folder.

Why `tfds.builder_from_directory` and not `tfds.data_source(name, ...)`: the latter goes through
the builder registry, so it needs the dataset's generation code (users' own datasets have
none registered), uses TFDS's *code* version of registered datasets such as div2k, and for a
missing dataset looks for metadata in TFDS's GCS bucket and then fails with an unhelpful
KeyError about empty splits. Reading `<data_dir>/<name>/<config>/<version>/` from its
dataset_info.json and features.json needs no code, never touches the network, and lets us
check what is there first and say exactly what is missing.

Reading records needs neither JAX nor TensorFlow: `import tensorflow_datasets` is lazy, and
TFDS decodes the stored PNGs with OpenCV or Pillow (`deserialize_example_np`). This module
runs in grain worker processes, which receive a `TfdsSource` by pickling; it pickles a few
strings and reopens the files lazily in the worker.
"""

from __future__ import annotations

import collections.abc
import re
import threading
import warnings
from typing import Any, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from sr_jax.data import sources

_VERSION_RE = re.compile(r"\d+\.\d+\.\d+")
_ARRAY_RECORD = "array_record"
# Folders of a TFDS data_dir that never hold a prepared dataset.
_NOT_DATASETS = ("downloads",)


def _build_hint(name: str, data_dir: str = "DIR") -> str:
  """How to prepare `name` as array_record, by the tfds CLI or, without apache-beam, Python."""
  name = name.split(":")[0]
  return (f"`tfds build {name} --file_format={_ARRAY_RECORD} --data_dir={data_dir}` or, in "
          f"Python (the tfds 4.9 CLI needs apache-beam installed), `tfds.builder({name!r}, "
          f"data_dir={data_dir!r}, file_format={_ARRAY_RECORD!r}).download_and_prepare()`, on a "
          f"machine with internet (or with the manual download files)")


def _is_version(path: epath.Path) -> bool:
  """True for a completely prepared `<version>/` folder (not `incomplete.*`, not a file)."""
  return (_VERSION_RE.fullmatch(path.name) is not None
          and (path / "dataset_info.json").exists())


def _version_key(version: str) -> tuple[int, ...]:
  return tuple(int(part) for part in version.split("."))


def _versions(folder: epath.Path) -> list[str]:
  """The prepared versions directly inside `folder`, oldest first."""
  if not folder.is_dir():
    return []
  return sorted((p.name for p in folder.iterdir() if p.is_dir() and _is_version(p)),
                key=_version_key)


def list_prepared(data_dir: str | epath.PathLike) -> list[str]:
  """Every prepared dataset in `data_dir` as 'name[/config]:version', for error messages."""
  root = epath.Path(data_dir).expanduser()
  found = []
  for dataset in sorted(root.iterdir(), key=lambda p: p.name):
    if (not dataset.is_dir() or dataset.name.startswith(".")
        or dataset.name in _NOT_DATASETS):
      continue
    found += [f"{dataset.name}:{v}" for v in _versions(dataset)]
    for config in sorted(dataset.iterdir(), key=lambda p: p.name):
      if config.is_dir() and not config.name.startswith(".") and not _is_version(config):
        found += [f"{dataset.name}/{config.name}:{v}" for v in _versions(config)]
  return found


def _parse_name(name: str) -> tuple[str, str, str]:
  """Splits 'dataset[/config][:version]' into its three parts ('' where absent)."""
  base, _, version = name.partition(":")
  dataset, _, config = base.partition("/")
  if not dataset or "/" in config or (version and not _VERSION_RE.fullmatch(version)):
    raise ValueError(f"Cannot parse TFDS dataset name {name!r}; expected "
                     f"'dataset[/config][:X.Y.Z]', e.g. 'div2k/bicubic_x4' or "
                     f"'div2k/bicubic_x4:2.0.0'.")
  return dataset, config, version


def find_builder_dir(name: str, data_dir: str | epath.PathLike) -> epath.Path:
  """The folder `<data_dir>/<dataset>[/<config>]/<version>` of a prepared dataset.

  Without a version in `name`, the newest prepared version is used. Raises ValueError or
  FileNotFoundError that say how to prepare the dataset, or list what `data_dir` holds.
  """
  if not str(data_dir).strip():
    raise ValueError(
        f"No TFDS data directory given for dataset {name!r} (data.tfds_data_dir is empty). "
        f"TFDS datasets must be prepared offline, e.g. {_build_hint(name)}, and "
        f"data.tfds_data_dir set to that DIR; sr_jax never downloads.")
  root = epath.Path(data_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(
        f"TFDS data directory {str(data_dir)!r} does not exist or is not a directory. "
        f"TFDS datasets must be prepared offline, e.g. {_build_hint(name, str(data_dir))}, "
        f"and data.tfds_data_dir set to the folder that holds them; sr_jax never downloads.")
  dataset, config, version = _parse_name(name)
  folder = root / dataset / config if config else root / dataset
  available = _versions(folder)
  if version and version in available:
    return folder / version
  if not version and available:
    return folder / available[-1]
  prepared = list_prepared(root)
  holds = (f"it holds these prepared datasets: {prepared}" if prepared else
           f"it holds no prepared dataset (entries: "
           f"{sorted(p.name for p in root.iterdir())})")
  wanted = f"{dataset}/{config}" if config else dataset
  if version and available:
    detail = f"version {version} of {wanted!r} is not prepared (available: {available})"
  else:
    detail = f"no prepared {wanted!r} (looked for {folder}/<version>/dataset_info.json)"
  raise FileNotFoundError(
      f"TFDS dataset {name!r} not found in {str(data_dir)!r}: {detail}; {holds}. Name one "
      f"of those (with its config, e.g. 'div2k/bicubic_x4') or prepare it offline with "
      f"{_build_hint(name, str(data_dir))}.")


def _split_names(split: str) -> list[str]:
  """The split names in a TFDS split spec ('train', 'train[:90%]+validation', ...)."""
  return [part.split("[")[0].strip() for part in split.split("+")]


def _max_value(image: np.ndarray) -> float:
  """The value that maps to 1.0: the integer type's maximum (255 for uint8), else 1."""
  if np.issubdtype(image.dtype, np.integer):
    return float(np.iinfo(image.dtype).max)
  return 1.0


class RecordNames(collections.abc.Sequence):
  """Readable record names 'name/split[i]', computed on demand (pickles as two strings)."""

  def __init__(self, prefix: str, length: int):
    self._prefix = prefix
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: Any) -> Any:
    if isinstance(index, slice):
      return tuple(self[i] for i in range(*index.indices(self._length)))
    index = int(index)
    if index < 0:
      index += self._length
    if not 0 <= index < self._length:
      raise IndexError(f"Record index {index} out of range [0, {self._length}).")
    return f"{self._prefix}[{index}]"

  def __iter__(self) -> Iterator[str]:
    return (f"{self._prefix}[{i}]" for i in range(self._length))

  def __repr__(self) -> str:
    return f"RecordNames({self._prefix!r}, {self._length})"


class TfdsSource:
  """A grain random-access source over a TFDS dataset's array_record files.

  `__len__` and `__getitem__`, like `sources.ImageSource`. Records are {'image': the
  `hr_key` image, 'index': position in the source} and, when `lr_key` is set (a paired
  dataset whose low-resolution input is stored with it), 'lq': the `lr_key` image. Images are
  decoded on every read (nothing is cached) to float32 HWC RGB in [0, 1]: integer images are
  divided by their type's maximum (uint8 by 255, so exactly stored / 255), grayscale is
  repeated to 3 channels and alpha dropped (with one warning per key and source).

  `names` gives 'name/split[i]' per record for eval tables. TFDS shuffles examples when it
  writes them, so position i is not the i-th source file (DIV2K validation[0] need not be 0801).

  The source pickles as its location (no decoded data, no file handles), so grain's spawned
  workers reopen the files themselves on first read.
  """

  def __init__(self, name: str, split: str, data_dir: str, hr_key: str = "hr",
               lr_key: str = ""):
    self.name = name
    self.split = split
    self.hr_key = hr_key
    self.lr_key = lr_key
    self.builder_dir = str(find_builder_dir(name, data_dir))
    builder = tfds.builder_from_directory(self.builder_dir)
    info = builder.info
    where = f"TFDS dataset {name!r} in {self.builder_dir}"
    formats = sorted(f.value for f in info.available_file_formats())
    if _ARRAY_RECORD not in formats:
      raise ValueError(
          f"{where} is prepared as {formats} only (no {_ARRAY_RECORD} files), but random "
          f"access needs {_ARRAY_RECORD}. Rebuild it with file_format={_ARRAY_RECORD} into "
          f"another data_dir (or after deleting {self.builder_dir}), e.g. "
          f"{_build_hint(name, str(data_dir))}.")
    available = sorted(info.splits.keys())
    missing = [s for s in _split_names(split) if s not in available]
    if missing:
      raise ValueError(f"Split {split!r} of {where}: {missing} not present; available "
                       f"splits: {available} (set data.tfds_train_split / "
                       "data.tfds_eval_split).")
    features = sorted(info.features.keys()) if info.features is not None else []
    for label, key in (("hr_key", hr_key), ("lr_key", lr_key)):
      if (key or label == "hr_key") and key not in features:
        raise ValueError(f"data.tfds_{label}={key!r} is not a feature of {where}; features: "
                         f"{features}.")
    self._lock = threading.Lock()
    self._source = builder.as_data_source(split=split, file_format=_ARRAY_RECORD)
    self._length = len(self._source)
    self._warned: set[str] = set()
    self.names = RecordNames(f"{name}/{split}", self._length)

  def _data_source(self) -> Any:
    """The TFDS data source, reopened on first use after unpickling (thread-safe)."""
    if self._source is None:
      with self._lock:
        if self._source is None:
          builder = tfds.builder_from_directory(self.builder_dir)
          self._source = builder.as_data_source(split=self.split, file_format=_ARRAY_RECORD)
    return self._source

  def _to_float_rgb(self, key: str, image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if (image.ndim != 3 or image.shape[-1] != 3) and key not in self._warned:
      self._warned.add(key)
      warnings.warn(f"TFDS dataset {self.name!r} ({self.split}): feature {key!r} holds "
                    f"images of shape {image.shape}, not RGB; converting to RGB (grayscale "
                    f"repeated to 3 channels, alpha dropped).", stacklevel=3)
    return sources.to_float_rgb(image, max_value=_max_value(image))

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if not 0 <= index < self._length:
      raise IndexError(f"Record index {index} out of range [0, {self._length}) for "
                       f"{self.name}/{self.split}.")
    example = self._data_source()[index]
    record = {"image": self._to_float_rgb(self.hr_key, example[self.hr_key]), "index": index}
    if self.lr_key:
      record["lq"] = self._to_float_rgb(self.lr_key, example[self.lr_key])
    return record

  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    state["_source"] = None  # Reopened lazily where it is unpickled.
    del state["_lock"]
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __repr__(self) -> str:
    paired = f", lr_key={self.lr_key!r}" if self.lr_key else ""
    return (f"TfdsSource({self.name!r}, split={self.split!r}, {self._length} records, "
            f"hr_key={self.hr_key!r}{paired}, dir={self.builder_dir!r})")


def load_tfds_source(name: str, split: str, data_dir: str, hr_key: str = "hr",
                     lr_key: str = "") -> TfdsSource:
  """Opens split `split` of the TFDS dataset `name` prepared in `data_dir`; never downloads.

  `name` is 'dataset[/config][:version]' (newest prepared version by default), e.g.
  'div2k/bicubic_x4'; `split` any TFDS split spec ('train', 'validation[:10]'). Raises
  ValueError / FileNotFoundError naming what is missing and how to fix it: an empty or
  missing `data_dir`, a dataset, config or version not prepared there (listing what is), a
  dataset prepared without array_record files, an unknown split (listing the splits) or a
  key that is not a feature (listing the features).
  """
  return TfdsSource(name, split, data_dir, hr_key=hr_key, lr_key=lr_key)
