"""grain input pipelines: infinite training batches and a fixed evaluation set.

Training stream (one per process):

  ImageSource -> seed(seed) -> shuffle -> repeat (infinite, reshuffled every epoch)
    -> random_map(RandomCropPair)            crop, degrade, augment: {'lq', 'gt'}
    -> [process_index::process_count]        this process's share of the global stream
    -> batch(batch_size // process_count) -> to_iter_dataset -> mp_prefetch (num_workers > 0)

The random map runs on the *global* record index, before sharding: a sample is a pure function
of (seed, global index), and the per-process streams interleave back into exactly the stream a
single process would read, so changing the number of hosts does not change what the model sees.

Everything here is numpy (DESIGN.md decision 6): grain spawns workers that unpickle the
pipeline, so nothing may import JAX. Batches are dicts of float32 (N, H, W, 3) numpy arrays;
the trainer moves them to devices in the main process.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from sr_jax.data import degradations
from sr_jax.data import sources

# Threads and buffered batches per process (each grain worker has its own). Batches are large
# (32 x 256^2 pairs is 50 MB), so the buffer stays small.
_READ_THREADS = 2
_PREFETCH_BATCHES = 4


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                step: int = 1) -> np.ndarray:
  """A `size` x `size` window of `image` whose top-left corner is a multiple of `step`."""
  h, w = image.shape[:2]
  if h < size or w < size:
    raise ValueError(f"Cannot crop {size}x{size} from a {h}x{w} image.")
  top = step * int(rng.integers(0, (h - size) // step + 1))
  left = step * int(rng.integers(0, (w - size) // step + 1))
  return image[top:top + size, left:left + size]


def augment_pair(lq: np.ndarray, gt: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Randomly flips and rotates lq and gt identically, so the pair stays aligned.

  Horizontal flip, vertical flip and transpose, each with probability 1/2, give all 8
  rotations/reflections of the square (BasicSR's `augment`).
  """
  hflip, vflip, transpose = rng.random(3) < 0.5

  def apply(x: np.ndarray) -> np.ndarray:
    if hflip:
      x = x[:, ::-1]
    if vflip:
      x = x[::-1]
    if transpose:
      x = x.transpose(1, 0, 2)
    return x

  return apply(lq), apply(gt)


class RandomCropPair(grain.transforms.RandomMap):
  """Turns a source record into a training pair {'lq', 'gt'} (float32 HWC).

  Crops `crop_size` from the clean image (for 'bicubic': on the HR grid, corner and size
  multiples of `scale`, so lq is crop_size / scale), degrades the crop, then optionally
  flips/rotates lq and gt together. All randomness comes from grain's per-record rng.
  """

  def __init__(self, crop_size: int, degradation: Any, augment: bool = True):
    self.crop_size = int(crop_size)
    self.degradation = degradations.as_spec(degradation)
    self.augment = bool(augment)
    spec = self.degradation
    self._step = spec.scale if spec.kind == "bicubic" else 1
    if self.crop_size % self._step:
      raise ValueError(f"data.crop_size={self.crop_size} must be a multiple of "
                       f"degradation.scale={spec.scale} for 'bicubic' (it is the HR crop).")

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    clean = random_crop(element["image"], self.crop_size, rng, step=self._step)
    lq, gt = degradations.make_pair(clean, rng, self.degradation)
    if self.augment:
      lq, gt = augment_pair(lq, gt, rng)
    return {"lq": np.ascontiguousarray(lq, np.float32),
            "gt": np.ascontiguousarray(gt, np.float32)}


def sharded_stream(source: Any, transform: grain.transforms.RandomMap, *, seed: int,
                   process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """The infinite, shuffled, transformed record stream of one process (unbatched)."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count}).")
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  ds = ds.random_map(transform)  # Keyed by the global index: see the module docstring.
  return ds[process_index::process_count]


def allow_absl_flags_outside_app() -> None:
  """Marks absl flags parsed (with their defaults) if nothing has parsed them yet.

  grain 0.2.18's mp_prefetch reads its absl flags and raises UnparsedFlagAccessError outside
  absl.app.run (library use, notebooks, pytest). Under app.run this is a no-op.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def per_process_batch_size(batch_size: int, process_count: int) -> int:
  """The global batch split evenly over processes (an uneven split is a config error)."""
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of the process "
                     f"count {process_count}.")
  return batch_size // process_count


def make_train_dataset(data_config: Any, *, seed: int, batch_size: int, process_index: int = 0,
                       process_count: int = 1, degradation: Any = None) -> grain.IterDataset:
  """Infinite training batches {'lq', 'gt'} of shape (batch_size // process_count, H, W, 3).

  `data_config` is the `data` sub-config; `degradation` overrides data_config.degradation
  (e.g. base.degradation to pre-train a base on another degradation). `iter()` of the result
  supports get_state()/set_state() for checkpointing.
  """
  degradation = data_config.degradation if degradation is None else degradation
  local_batch = per_process_batch_size(batch_size, process_count)
  transform = RandomCropPair(data_config.crop_size, degradation, data_config.augment)
  source = sources.ImageSource(sources.load_images(data_config, "train"))
  ds = sharded_stream(source, transform, seed=seed, process_index=process_index,
                      process_count=process_count)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS,
                                            prefetch_buffer_size=_PREFETCH_BATCHES))
  if data_config.num_workers > 0:
    allow_absl_flags_outside_app()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers))
  return ds


def center_crop(image: np.ndarray, max_size: int) -> np.ndarray:
  """The central window of at most `max_size` pixels per side (max_size <= 0: the image)."""
  if max_size <= 0:
    return image
  h, w = image.shape[:2]
  top, left = max(0, (h - max_size) // 2), max(0, (w - max_size) // 2)
  return image[top:top + max_size, left:left + max_size]


def make_eval_set(data_config: Any, *, seed: int, degradation: Any = None) -> list[dict[str, Any]]:
  """The evaluation images as [{'name', 'lq', 'gt'}], full resolution (float32 HWC).

  Each image is centre-cropped to data.eval_max_size, modcropped to the scale for 'bicubic',
  and degraded with an rng derived from (seed, image index), so every evaluation of a run
  (and every run with the same seed) sees identical inputs.
  """
  spec = degradations.as_spec(data_config.degradation if degradation is None else degradation)
  examples = []
  for index, (name, image) in enumerate(sources.load_images(data_config, "eval")):
    clean = center_crop(image, data_config.eval_max_size)
    lq, gt = degradations.make_pair(clean, np.random.default_rng([seed, index]), spec)
    examples.append({"name": name, "lq": lq, "gt": np.ascontiguousarray(gt)})
  return examples
