"""Where training and evaluation images come from (`data.source`), as grain sources.

  'embedded'  photographs that ship inside the scikit-image wheel (no network, no download),
              split once and for all into EMBEDDED_TRAIN and
              EMBEDDED_EVAL so every run evaluates on the same held-out images; held in memory
  'folder'    clean images in a folder, decoded lazily per record (FolderSource)
  'paired'    degraded inputs and targets in two folders, matched by file name
  'tfds'      a prepared TFDS dataset read through tfds.data_source (sr_jax/data/tfds_source.py)

sr_jax.data.choose_source picks one of these for `data.source` and a split.

A record is {'image': the clean / target image, 'index'} plus 'lq' for paired data. Every
image is float32 HWC RGB in [0, 1]: grayscale is repeated to 3 channels and alpha dropped, with
a warning naming the file, so the rest of the pipeline sees one format. This module runs in
grain worker processes too: numpy, Pillow and scikit-image only, never JAX.
"""

from __future__ import annotations

import functools
import pathlib
import warnings
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

from sr_jax.data import integrity

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SMALL_IMAGE_POLICIES = ("skip", "error")

# Training photographs: animals, objects, vehicles, microscopy, textures and a few grayscale
# classics, all at least 300 pixels per side so the paper-scale 256 crop fits every one.
# Near-empty frames (hubble_deep_field, retina: mostly black) are left out on purpose.
EMBEDDED_TRAIN = (
    "chelsea", "rocket", "immunohistochemistry", "motorcycle_left", "camera", "coins",
    "grass", "gravel", "moon",
)
# Held out for evaluation: a portrait, a colourful still life and a fine texture.
EMBEDDED_EVAL = ("astronaut", "coffee", "brick")
# data.embedded_set: the photographs above, or a second domain for domain-transfer demos
# (scanned text: a printed page to train on, a different page of text held out).
EMBEDDED_SETS = {"photos": (EMBEDDED_TRAIN, EMBEDDED_EVAL),
                 "documents": (("page",), ("text",))}
_EMBEDDED_NAMES = tuple(n for train, held in EMBEDDED_SETS.values() for n in train + held)

Images = list[tuple[str, np.ndarray]]


def to_float_rgb(image: np.ndarray, max_value: float = 255.0) -> np.ndarray:
  """Converts an HW, HW1, HW3 or HW4 array to float32 HWC RGB in [0, 1] (alpha dropped)."""
  image = np.asarray(image)
  if image.dtype == bool:
    max_value = 1.0
  image = image.astype(np.float32) / np.float32(max_value)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f"Expected an HW or HWC image with 1-4 channels, got shape {image.shape}.")
  channels = image.shape[-1]
  image = image[..., :1] if channels in (1, 2) else image[..., :3]  # Drop alpha.
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(np.clip(image, 0.0, 1.0))


@functools.lru_cache(maxsize=None)
def _embedded_uint8(name: str) -> np.ndarray:
  """Decodes one bundled photograph once per process (tests and evals reload them often)."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  if name == "motorcycle_left":
    image = skimage.data.stereo_motorcycle()[0]
  else:
    image = getattr(skimage.data, name)()
  image.flags.writeable = False  # The cache shares it.
  return image


def load_embedded(name: str) -> np.ndarray:
  """Returns the scikit-image photograph `name` as float32 HWC RGB in [0, 1]."""
  if name not in _EMBEDDED_NAMES:
    raise ValueError(f"Unknown embedded image {name!r}; available: "
                     f"{sorted(_EMBEDDED_NAMES)}.")
  return to_float_rgb(_embedded_uint8(name))


def _decoded_bit_depth_16(image: Image.Image) -> bool:
  """True when the file stores 16 bits per sample (read before decoding: load() drops it)."""
  try:
    return ";16" in str(image.tile[0][3])
  except (IndexError, TypeError, AttributeError):
    return False


def _pil_to_float_rgb(image: Image.Image, path: pathlib.Path, is_16bit: bool) -> np.ndarray:
  """Converts a decoded Pillow image to float32 RGB, warning where precision is at stake."""
  if image.mode.startswith("I"):  # 'I;16*' (16-bit grayscale) or 'I' (32-bit int).
    warnings.warn(f"{path}: 16-bit grayscale image ({image.mode}); scaled to [0, 1] by "
                  f"1/65535.", stacklevel=3)
    return to_float_rgb(np.asarray(image), max_value=65535.0)
  if is_16bit:
    warnings.warn(f"{path}: 16-bit colour image; Pillow decodes it to 8 bits per channel, "
                  f"so the extra precision is lost.", stacklevel=3)
  if image.mode not in ("L", "LA", "RGB", "RGBA"):
    image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info
                          else "RGB")
  if image.mode in ("L", "LA"):
    warnings.warn(f"{path}: grayscale image; its channel is repeated to RGB.", stacklevel=3)
  if image.mode in ("LA", "RGBA"):
    warnings.warn(f"{path}: image has an alpha channel; it is dropped (not composited).",
                  stacklevel=3)
  return to_float_rgb(np.asarray(image))


def read_image(path: str | pathlib.Path) -> np.ndarray:
  """Reads an image file as float32 HWC RGB in [0, 1], honouring EXIF orientation.

  Raises ValueError naming the file when Pillow cannot decode it (corrupt, truncated or not
  an image), so a bad file in a large folder is easy to find.
  """
  path = pathlib.Path(path)
  try:
    with Image.open(path) as image:
      is_16bit = _decoded_bit_depth_16(image)
      image.load()
      image = ImageOps.exif_transpose(image)
      return _pil_to_float_rgb(image, path, is_16bit)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"Cannot read image file {path}: {e}") from e


def list_image_files(directory: str | pathlib.Path,
                     recursive: bool = False) -> list[pathlib.Path]:
  """The image files inside `directory` (and its sub-folders if `recursive`, data.recursive),
  sorted by path, hidden ones skipped. Sub-folders a flat listing skips get a warning."""
  path = pathlib.Path(directory).expanduser()
  accepted = ", ".join(IMAGE_EXTENSIONS)
  if not path.is_dir():
    raise FileNotFoundError(
        f"Image directory {str(directory)!r} does not exist or is not a directory; expected a "
        f"folder of image files ({accepted}).")
  candidates = path.rglob("*") if recursive else path.iterdir()
  files = sorted(p for p in candidates
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                 and not any(part.startswith(".") for part in p.relative_to(path).parts))
  if not recursive:
    integrity.warn_nested_dirs(path, IMAGE_EXTENSIONS)
  if not files:
    raise ValueError(f"Image directory {str(directory)!r} holds no image files; accepted "
                     f"extensions (case-insensitive): {accepted}.")
  return files


def load_folder(directory: str | pathlib.Path) -> Images:
  """Reads every image in `directory` as (file name, float32 HWC RGB) pairs."""
  return [(p.name, read_image(p)) for p in list_image_files(directory)]


def image_size(path: str | pathlib.Path) -> tuple[int, int]:
  """(height, width) of an image file, read from its header without decoding the pixels."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"Cannot read image file {path}: {e}") from e
  return height, width


def large_enough(sizes: Sequence[tuple[str, tuple[int, int]]], crop_size: int, policy: str,
                 where: str) -> list[int]:
  """Indices of the images at least `crop_size` on both sides, applying `data.small_images`.

  'skip' warns (naming the file and its size) and drops the image; 'error' raises. Either
  way an empty result is an error, since a training set with no usable image cannot run.
  """
  if policy not in SMALL_IMAGE_POLICIES:
    raise ValueError(f"Unknown data.small_images {policy!r}; valid: {list(SMALL_IMAGE_POLICIES)}.")
  kept = []
  for index, (name, (h, w)) in enumerate(sizes):
    if h >= crop_size and w >= crop_size:
      kept.append(index)
      continue
    message = (f"Training image {name!r} ({where}) is {h}x{w} pixels, smaller than "
               f"data.crop_size={crop_size}")
    if policy == "error":
      raise ValueError(f"{message}. Remove it, lower the crop size, or set "
                       f"data.small_images='skip' to drop such images.")
    warnings.warn(f"{message}; skipping it.", stacklevel=3)
  if not kept:
    raise ValueError(f"No training image ({where}) is at least {crop_size}x{crop_size} "
                     f"pixels (data.crop_size); nothing to train on.")
  return kept


def drop_small_images(images: Images, crop_size: int, policy: str, where: str) -> Images:
  """Applies `data.small_images` to decoded images (see `large_enough`)."""
  sizes = [(name, image.shape[:2]) for name, image in images]
  return [images[i] for i in large_enough(sizes, crop_size, policy, where)]


def load_images(data_config: Any, split: str) -> Images:
  """The embedded photos of `split` ('train' or 'eval') as (name, float32 HWC RGB) pairs.

  Decodes them into memory (make_source's 'embedded'; other sources go through make_source).
  `data_config` is the `data` sub-config of sr_jax/config/config_base.py. Training images smaller
  than data.crop_size are handled by data.small_images; eval images are whole.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"Unknown split {split!r}; valid splits: ['train', 'eval'].")
  if data_config.source != "embedded":
    raise ValueError(f"load_images reads the embedded photos, not data.source="
                     f"{data_config.source!r}; use make_source for every source.")
  chosen = data_config.get("embedded_set", "photos")
  if chosen not in EMBEDDED_SETS:
    raise ValueError(f"Unknown data.embedded_set {chosen!r}; valid: {sorted(EMBEDDED_SETS)}.")
  names = EMBEDDED_SETS[chosen][0 if split == "train" else 1]
  images, where = [(n, load_embedded(n)) for n in names], f"embedded {chosen} (scikit-image)"
  if split == "train":
    images = drop_small_images(images, data_config.crop_size, data_config.small_images, where)
  return images


class ImageSource:
  """A grain random-access source (`__len__`, `__getitem__`) over images held in memory.

  Holding decoded float32 arrays is right for the embedded set (about 26 MB); every spawned
  grain worker receives its own pickled copy. Folders use FolderSource, which decodes lazily.
  Records are {'image': float32 HWC (read-only, shared: transforms must not modify it in
  place), 'index': position in the source}.
  """

  def __init__(self, images: Sequence[tuple[str, np.ndarray]]):
    if not images:
      raise ValueError("ImageSource needs at least one image.")
    self.names = tuple(name for name, _ in images)
    self._images = tuple(self._frozen(image) for _, image in images)

  @staticmethod
  def _frozen(image: np.ndarray) -> np.ndarray:
    image = np.array(image, np.float32)  # A private copy the caller cannot mutate.
    image.flags.writeable = False
    return image

  def __len__(self) -> int:
    return len(self._images)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self._images[index], "index": int(index)}

  def sizes(self) -> list[tuple[int, int]]:
    """(height, width) of every image."""
    return [tuple(image.shape[:2]) for image in self._images]

  def __repr__(self) -> str:
    more = ", ..." if len(self) > 5 else ""
    return f"ImageSource({len(self)} images: {', '.join(self.names[:5])}{more})"


class FolderSource:
  """A grain source over a folder's image files, decoded when a record is read.

  Only file names and sizes (from the headers) are read up front, so a DIV2K-sized folder
  costs no memory until workers decode their records; a file that fails to decode raises an
  error naming it. Records are {'image': float32 HWC RGB, 'index'}.
  """

  def __init__(self, files: Sequence[pathlib.Path], root: str | pathlib.Path | None = None):
    if not files:
      raise ValueError("FolderSource needs at least one file.")
    self.files = tuple(pathlib.Path(f) for f in files)
    # Names relative to `root` (a recursive listing's sub-folders keep same-named files apart).
    self.names = tuple(f.relative_to(pathlib.Path(root).expanduser()).as_posix() if root
                       else f.name for f in self.files)

  @classmethod
  def for_training(cls, directory: str, crop_size: int, policy: str, skip_bad: bool = False,
                   recursive: bool = False) -> "FolderSource":
    """The folder's intact images that fit the training crop (data.skip_bad_images,
    data.small_images and data.recursive)."""
    files = list_image_files(directory, recursive)
    files = [files[i] for i in integrity.usable([[f] for f in files], skip_bad, f"in {directory}")]
    sizes = [(f.name, image_size(f)) for f in files]
    return cls([files[i] for i in large_enough(sizes, crop_size, policy, f"in {directory}")],
               directory if recursive else None)

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": read_image(self.files[index]), "index": int(index)}

  def sizes(self) -> list[tuple[int, int]]:
    """(height, width) of every file, from the headers (nothing is decoded)."""
    return [image_size(f) for f in self.files]

  def __repr__(self) -> str:
    return f"FolderSource({len(self)} files in {self.files[0].parent})"


def _match_key(stem: str, scale: int) -> str:
  """A file stem without a trailing 'x{scale}' (DIV2K names LR files '0001x4.png')."""
  suffix = f"x{scale}"
  return stem[:-len(suffix)] if scale > 1 and stem.endswith(suffix) else stem


def match_pairs(lq_files: Sequence[pathlib.Path], gt_files: Sequence[pathlib.Path],
                scale: int, where: str) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """Pairs LQ and GT files by name (stem, ignoring extension and a DIV2K 'x{scale}' suffix).

  Every file must have exactly one partner; otherwise the error lists the unmatched names.
  """
  gt = {f.stem: f for f in gt_files}
  lq = {(f.stem if f.stem in gt else _match_key(f.stem, scale)): f for f in lq_files}
  if len(lq) != len(lq_files) or len(gt) != len(gt_files):
    raise ValueError(f"Two files in the paired folders ({where}) share a name up to the "
                     "extension; rename one so every LQ/GT pair is unambiguous.")
  only_lq, only_gt = sorted(set(lq) - set(gt)), sorted(set(gt) - set(lq))
  if only_lq or only_gt:
    def listing(names):
      return ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
    raise ValueError(
        f"Paired folders ({where}) do not match by file name: "
        + (f"LQ files without a GT: {listing([lq[k].name for k in only_lq])}. " if only_lq else "")
        + (f"GT files without an LQ: {listing([gt[k].name for k in only_gt])}. " if only_gt else "")
        + "Each LQ file needs a GT file of the same name (any extension; an LQ name may end "
          f"in 'x{scale}' as in DIV2K).")
  return [(lq[k], gt[k]) for k in sorted(gt)]


def check_pair_sizes(lq_size: tuple[int, int], gt_size: tuple[int, int], scale: int,
                     names: str) -> None:
  """GT must be `scale` times LQ (up to scale - 1 extra pixels, which are cropped away)."""
  ok = all(0 <= g - scale * q < scale for q, g in zip(lq_size, gt_size))
  if not ok:
    raise ValueError(
        f"{names}: GT is {gt_size[0]}x{gt_size[1]} but LQ is {lq_size[0]}x{lq_size[1]}; with "
        f"degradation.scale={scale} GT must be {scale}x the LQ size. Set "
        "--config.data.degradation.scale to the folders' ratio (1 for restoration).")


def aligned_target(lq: np.ndarray, gt: np.ndarray, scale: int, names: str) -> np.ndarray:
  """`gt` cropped at the bottom/right to exactly `scale` x the LQ size (MATLAB's modcrop),
  after `check_pair_sizes`: the one rule every stored pair goes through."""
  check_pair_sizes(lq.shape[:2], gt.shape[:2], scale, names)
  return gt[:lq.shape[0] * scale, :lq.shape[1] * scale]


class PairedFolderSource:
  """A grain source over LQ/GT files matched by name; records {'image' (GT), 'lq', 'index'}.

  Sizes are checked from the headers up front, so a mismatched pair fails before training;
  `skip_bad` (data.skip_bad_images; None for evaluation: no check) handles damaged files.
  GT is cropped to exactly `scale` x LQ at the bottom/right (MATLAB's modcrop).
  """

  def __init__(self, lq_dir: str, gt_dir: str, scale: int = 1, crop_size: int = 0,
               policy: str = "skip", skip_bad: bool | None = None, recursive: bool = False):
    where = f"LQ {lq_dir}, GT {gt_dir}"
    pairs = match_pairs(list_image_files(lq_dir, recursive), list_image_files(gt_dir, recursive),
                        scale, where)
    if skip_bad is not None:
      pairs = [pairs[i] for i in integrity.usable(pairs, skip_bad, f"({where})")]
    sizes = []
    for lq_file, gt_file in pairs:
      gt_size = image_size(gt_file)
      check_pair_sizes(image_size(lq_file), gt_size, scale, f"{lq_file} / {gt_file}")
      sizes.append((gt_file.name, gt_size))
    if crop_size:
      pairs = [pairs[i] for i in large_enough(sizes, crop_size, policy, where)]
    self.pairs, self.scale = tuple(pairs), int(scale)
    self.names = tuple(gt.name for _, gt in self.pairs)

  def __len__(self) -> int:
    return len(self.pairs)

  def __getitem__(self, index: int) -> dict[str, Any]:
    lq_file, gt_file = self.pairs[index]
    lq = read_image(lq_file)
    gt = aligned_target(lq, read_image(gt_file), self.scale, f"{lq_file} / {gt_file}")
    return {"image": np.ascontiguousarray(gt), "lq": lq, "index": int(index)}

  def __repr__(self) -> str:
    return f"PairedFolderSource({len(self)} pairs, scale {self.scale})"
