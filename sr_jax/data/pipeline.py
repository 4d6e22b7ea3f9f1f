"""grain input pipelines: infinite training batches and a fixed evaluation set.

Training stream (one per process):

  source (choose_source.make_source) -> seed(seed) -> shuffle -> repeat (infinite, reshuffled every epoch)
    -> random_map(RandomCropPair)            crop, degrade (or crop a stored pair), augment
    -> [process_index::process_count]        this process's share of the global stream
    -> batch(batch_size // process_count) -> to_iter_dataset -> mp_prefetch (num_workers > 0)

The random map runs on the *global* record index, before sharding: a sample is a pure function
of (seed, global index), and the per-process streams interleave back into exactly the stream a
single process would read, so changing the number of hosts does not change what the model sees.

Everything here is numpy (never JAX): grain spawns workers that unpickle the
pipeline, so nothing may import JAX. Batches are dicts of float32 (N, H, W, 3) numpy arrays;
the trainer moves them to devices in the main process.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
from typing import Any

import grain
import numpy as np

from sr_jax.data import choose_source, degradations, ops, sources

# Threads and buffered batches per process (each grain worker has its own). Batches are large
# (32 x 256^2 pairs is 50 MB), so the buffer stays small.
_READ_THREADS = 2
_PREFETCH_BATCHES = 4


def random_corner(height: int, width: int, size: int, rng: np.random.Generator,
                  step: int = 1) -> tuple[int, int]:
  """The top-left corner of a random `size` x `size` window, a multiple of `step`."""
  if height < size or width < size:
    raise ValueError(f"Cannot crop {size}x{size} from a {height}x{width} image.")
  top = step * int(rng.integers(0, (height - size) // step + 1))
  left = step * int(rng.integers(0, (width - size) // step + 1))
  return top, left


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                step: int = 1) -> np.ndarray:
  """A `size` x `size` window of `image` whose top-left corner is a multiple of `step`."""
  top, left = random_corner(image.shape[0], image.shape[1], size, rng, step)
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


def crop_pair(lq: np.ndarray, gt: np.ndarray, size: int, scale: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Aligned crops of a stored pair: `size` on the GT (HR) grid, size / scale on the LQ grid.

  The corner is drawn on the LQ grid and multiplied by `scale`, so lq_crop covers exactly the
  area of gt_crop (gt is assumed to be `scale` x lq, as PairedFolderSource guarantees).
  """
  lq_size = size // scale
  top, left = random_corner(lq.shape[0], lq.shape[1], lq_size, rng)
  lq_crop = lq[top:top + lq_size, left:left + lq_size]
  top, left = top * scale, left * scale
  return lq_crop, gt[top:top + size, left:left + size]


class RandomCropPair(grain.transforms.RandomMap):
  """Turns a source record into a training pair {'lq', 'gt'} (float32 HWC).

  Records with a stored 'lq' (paired sources) are cropped in alignment: `crop_size` on the GT,
  crop_size / scale on the LQ. Clean records are cropped to `crop_size` (for SR on the HR grid:
  corner and size multiples of the scale, so lq is crop_size / scale) and degraded. Then lq and
  gt are optionally flipped/rotated together. All randomness comes from grain's per-record rng.
  """

  def __init__(self, crop_size: int, degradation: Any, augment: bool = True):
    self.crop_size = int(crop_size)
    self.degradation = degradations.as_spec(degradation)
    self.augment = bool(augment)
    self._scale = self.degradation.effective_scale
    if self.crop_size % self._scale:
      raise ValueError(f"data.crop_size={self.crop_size} must be a multiple of "
                       f"degradation.scale={self._scale} (it is the HR crop).")

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    h, w = element["image"].shape[:2]
    if h < self.crop_size or w < self.crop_size:  # Sources that could not filter up front.
      raise ValueError(f"Record {element.get('index')} is {h}x{w} pixels, smaller than "
                       f"data.crop_size={self.crop_size}; lower the crop size or remove the "
                       "record from the dataset.")
    if "lq" in element:
      lq, gt = self._stored_pair(element, rng)
    else:
      top, left = random_corner(h, w, self.crop_size, rng, self._scale)
      clean = element["image"][top:top + self.crop_size, left:left + self.crop_size]
      lq, gt = degradations.make_pair(clean, rng, self.degradation,
                                      ops.Window(top, left, h, w))
    if self.augment:
      lq, gt = augment_pair(lq, gt, rng)
    return {"lq": np.ascontiguousarray(lq, np.float32),
            "gt": np.ascontiguousarray(gt, np.float32)}

  def _stored_pair(self, element: dict[str, Any],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    lq, gt = element["lq"], element["image"]
    gt = sources.aligned_target(lq, gt, self._scale, f"Record {element.get('index')}")
    return crop_pair(lq, gt, self.crop_size, self._scale, rng)


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


# How often a grain worker checks that the trainer that spawned it is still alive.
PARENT_POLL_S = 0.5


def _exit_when_orphaned(parent_pid: int, poll_s: float) -> None:
  """Polls the worker's parent pid; once the parent is gone (reparented), ends the process."""
  while os.getppid() == parent_pid:
    threading.Event().wait(poll_s)
  os._exit(1)  # pylint: disable=protected-access  # Not sys.exit: the main thread may block.


def die_with_parent(worker_index: int = 0, worker_count: int = 1,
                    poll_s: float = PARENT_POLL_S) -> None:
  """grain worker initialiser: the worker ends when the trainer that spawned it dies.

  A trainer killed with SIGKILL runs no cleanup, and grain's spawned workers would otherwise
  block on their full output queues under PID 1 for minutes (each holding its own copy of the
  source). Linux's PR_SET_PDEATHSIG is not used: it fires when the *thread* that spawned the
  worker ends, and grain starts workers from its reader pool's threads, whose lifetime it does
  not promise (a restore re-creates them). A daemon thread polling
  the parent pid works on every POSIX system; once the workers are gone, multiprocessing's
  resource tracker sees its pipe close and exits too, unlinking any shared memory they left.
  """
  del worker_index, worker_count
  if sys.platform == "win32":  # Windows ends a job's children differently; nothing to do.
    return
  parent = multiprocessing.parent_process()  # The spawner, even if it already died.
  parent_pid = parent.pid if parent is not None else os.getppid()
  threading.Thread(target=_exit_when_orphaned, args=(parent_pid, poll_s), daemon=True,
                   name="die-with-parent").start()


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
  source = choose_source.make_source(data_config, "train", transform.degradation.effective_scale)
  ds = sharded_stream(source, transform, seed=seed, process_index=process_index,
                      process_count=process_count)
  ds = ds.batch(local_batch, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS,
                                            prefetch_buffer_size=_PREFETCH_BATCHES))
  if data_config.num_workers > 0:
    allow_absl_flags_outside_app()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers),
                        worker_init_fn=die_with_parent)
  return ds


def train_record_count(data_config: Any, degradation: Any = None) -> int:
  """How many records the training source holds (after dropped images): saved with a
  checkpoint so a resume can warn when files went missing (integrity.warn_if_fewer)."""
  spec = degradations.as_spec(data_config.degradation if degradation is None else degradation)
  return len(choose_source.make_source(data_config, "train", spec.effective_scale))


def train_image_side(data_config: Any, degradation: Any = None) -> int:
  """The median short side, in pixels, of the training images (0 when the source cannot say
  without decoding them: TFDS, stored pairs). Recorded with exports: TLC scales its window by
  how much larger an image to restore is (sr_jax.inference.tlc_inference)."""
  spec = degradations.as_spec(data_config.degradation if degradation is None else degradation)
  source = choose_source.make_source(data_config, "train", spec.effective_scale)
  inner = getattr(source, "source", source)  # A few-shot or validation slice: its source.
  if not hasattr(inner, "sizes"):
    return 0
  sides = [min(size) for size in source.sizes()]
  return int(np.median(sides)) if sides else 0


def center_crop(image: np.ndarray, max_size: int, max_width: int | None = None,
                step: int = 1) -> np.ndarray:
  """The central window of at most `max_size` (x `max_width`) pixels; <= 0 keeps a side whole.

  With `step`, the corner is a multiple of `step`, so the window of a GT stays aligned with
  the matching window of its LQ image (whose corner is the same one divided by `step`).
  """
  max_width = max_size if max_width is None else max_width
  h, w = image.shape[:2]
  size_h = h if max_size <= 0 else min(h, max_size)
  size_w = w if max_width <= 0 else min(w, max_width)
  top = (h - size_h) // 2 // step * step
  left = (w - size_w) // 2 // step * step
  return image[top:top + size_h, left:left + size_w]


def crop_windows(height: int, width: int, size: int, count: int) -> list[tuple[int, int]]:
  """(top, left) of `count` crops of `size` (clipped to the image; <= 0: the whole image)
  spread evenly over it: the centre crop when count is 1, else crops centred on the cells of a
  ceil(sqrt(count))-square grid over the image (row by row, the first `count`), kept inside
  the image."""
  size_h, size_w = (height, width) if size <= 0 else (min(height, size), min(width, size))
  if count == 1:  # As center_crop places it.
    return [((height - size_h) // 2, (width - size_w) // 2)]
  side = math.ceil(math.sqrt(count))

  def starts(extent: int, crop: int) -> list[int]:
    centres = (np.arange(side) + 0.5) * extent / side
    return [int(np.clip(round(c - crop / 2), 0, extent - crop)) for c in centres]

  return [(t, l) for t in starts(height, size_h) for l in starts(width, size_w)][:count]


def make_eval_set(data_config: Any, *, seed: int, degradation: Any = None) -> list[dict[str, Any]]:
  """The evaluation images as [{'name', 'lq', 'gt'}], full resolution (float32 HWC): the
  held-out images, or with data.eval_split='val' the validation split of the training images.

  Clean images are cropped to data.eval_max_size (the centre, or data.eval_crops crops spread
  over each image), modcropped to the scale for SR, and degraded with an rng derived from
  (seed, example index), so every evaluation of a run (and every run with the same seed) sees
  identical inputs. Stored pairs are centre-cropped in alignment and used as they are.
  """
  spec = degradations.as_spec(data_config.degradation if degradation is None else degradation)
  scale = spec.effective_scale
  split = data_config.get("eval_split", "eval")
  if split not in ("eval", "val"):
    raise ValueError(f"Unknown data.eval_split {split!r}; use 'eval' (the held-out images) or "
                     "'val' (the validation split carved from the training images).")
  crops = int(data_config.get("eval_crops", 1))
  source = choose_source.make_source(data_config, split, scale)
  examples = []
  for index in range(len(source)):
    record, name = source[index], source.names[index]
    if "lq" in record:
      lq = record["lq"]
      gt = sources.aligned_target(lq, record["image"], scale, name)
      lq = center_crop(lq, data_config.eval_max_size // scale)
      gt = center_crop(gt, lq.shape[0] * scale, lq.shape[1] * scale, scale)
      examples.append({"name": name, "lq": lq, "gt": np.ascontiguousarray(gt)})
      continue
    image, size = record["image"], data_config.eval_max_size
    height, width = (image.shape[:2] if size <= 0 else
                     (min(image.shape[0], size), min(image.shape[1], size)))
    for j, (top, left) in enumerate(crop_windows(*image.shape[:2], size, crops)):
      clean = image[top:top + height, left:left + width]
      window = ops.Window(top, left, *image.shape[:2])
      lq, gt = degradations.make_pair(clean, np.random.default_rng([seed, len(examples)]),
                                      spec, window)
      examples.append({"name": name if crops == 1 else f"{name}_crop{j}", "lq": lq,
                       "gt": np.ascontiguousarray(gt)})
  return examples
