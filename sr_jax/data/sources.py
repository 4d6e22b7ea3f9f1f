"""Where clean images come from: scikit-image's bundled photographs or a folder of files.

Every loader returns float32 HWC RGB images in [0, 1] (grayscale is repeated to 3 channels,
alpha is dropped), so the rest of the pipeline sees one format. This module runs in grain
worker processes too: numpy, Pillow and scikit-image only, never JAX.

`data.source='embedded'` uses photographs that ship inside the scikit-image wheel (no network,
no download; REFERENCE.md section 11), split once and for all into EMBEDDED_TRAIN and
EMBEDDED_EVAL so every run evaluates on the same held-out images.
"""

from __future__ import annotations

import functools
import pathlib
import warnings
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL import ImageOps

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
  if name not in EMBEDDED_TRAIN + EMBEDDED_EVAL:
    raise ValueError(f"Unknown embedded image {name!r}; available: "
                     f"{sorted(EMBEDDED_TRAIN + EMBEDDED_EVAL)}.")
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


def list_image_files(directory: str | pathlib.Path) -> list[pathlib.Path]:
  """The image files directly inside `directory`, sorted by name (hidden files skipped)."""
  path = pathlib.Path(directory).expanduser()
  accepted = ", ".join(IMAGE_EXTENSIONS)
  if not path.is_dir():
    raise FileNotFoundError(
        f"Image directory {str(directory)!r} does not exist or is not a directory; expected a "
        f"folder of image files ({accepted}).")
  files = sorted(p for p in path.iterdir()
                 if p.is_file() and not p.name.startswith(".")
                 and p.suffix.lower() in IMAGE_EXTENSIONS)
  if not files:
    raise ValueError(f"Image directory {str(directory)!r} holds no image files; accepted "
                     f"extensions (case-insensitive): {accepted}.")
  return files


def load_folder(directory: str | pathlib.Path) -> Images:
  """Reads every image in `directory` as (file name, float32 HWC RGB) pairs."""
  return [(p.name, read_image(p)) for p in list_image_files(directory)]


def drop_small_images(images: Images, crop_size: int, policy: str, where: str) -> Images:
  """Applies `data.small_images` to images smaller than the training crop on either side.

  'skip' warns (naming the file and its size) and drops the image; 'error' raises. Either
  way an empty result is an error, since a training set with no usable image cannot run.
  """
  if policy not in SMALL_IMAGE_POLICIES:
    raise ValueError(f"Unknown data.small_images {policy!r}; valid: {list(SMALL_IMAGE_POLICIES)}.")
  kept = []
  for name, image in images:
    h, w = image.shape[:2]
    if h >= crop_size and w >= crop_size:
      kept.append((name, image))
      continue
    message = (f"Training image {name!r} ({where}) is {h}x{w} pixels, smaller than "
               f"data.crop_size={crop_size}")
    if policy == "error":
      raise ValueError(f"{message}. Remove it, lower the crop size, or set "
                       f"data.small_images='skip' to drop such images.")
    warnings.warn(f"{message}; skipping it.", stacklevel=2)
  if not kept:
    raise ValueError(f"No training image ({where}) is at least {crop_size}x{crop_size} "
                     f"pixels (data.crop_size); nothing to train on.")
  return kept


def load_images(data_config: Any, split: str) -> Images:
  """Loads the clean images of `split` ('train' or 'eval') as (name, float32 HWC RGB) pairs.

  `data_config` is the `data` sub-config of configs/common.py. Training images smaller than
  data.crop_size are handled by data.small_images; evaluation images are used whole.
  """
  if split not in ("train", "eval"):
    raise ValueError(f"Unknown split {split!r}; valid splits: ['train', 'eval'].")
  if data_config.source == "embedded":
    names = EMBEDDED_TRAIN if split == "train" else EMBEDDED_EVAL
    images, where = [(n, load_embedded(n)) for n in names], "embedded scikit-image photos"
  elif data_config.source == "folder":
    key = f"{split}_dir"
    directory = getattr(data_config, key)
    if not directory:
      raise ValueError(f"data.source='folder' needs data.{key} "
                       f"(e.g. --config.data.{key}=/path/to/images).")
    images, where = load_folder(directory), f"in {directory}"
  else:
    raise ValueError(f"Unknown data.source {data_config.source!r}; valid: "
                     f"['embedded', 'folder'].")
  if split == "train":
    images = drop_small_images(images, data_config.crop_size, data_config.small_images, where)
  return images


class ImageSource:
  """A grain random-access source (`__len__`, `__getitem__`) over images held in memory.

  Holding decoded float32 arrays is right for the embedded set (about 26 MB) and folders of a
  few hundred small images; every spawned grain worker receives its own pickled copy. A
  DIV2K-scale folder (tens of GB as float32) would need a source that decodes lazily instead.
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

  def __repr__(self) -> str:
    more = ", ..." if len(self) > 5 else ""
    return f"ImageSource({len(self)} images: {', '.join(self.names[:5])}{more})"
