"""Tests for sr_jax.data: sources, degradations and the grain pipelines (numpy only, fast)."""

import ast
import pathlib
import socket
import struct
import subprocess
import sys
import zlib

import numpy as np
from PIL import Image
import pytest

from sr_jax.config import config_base as _config_module
from sr_jax.data import choose_source, degradations, kernels, op_ranges, pipeline, sources


REPO = pathlib.Path(__file__).resolve().parents[1]


def data_config(**overrides):
  """The real `data` sub-config with test-sized overrides (degradation.* via 'deg_' keys)."""
  config = _config_module.base_config().data
  for key, value in overrides.items():
    if key.startswith("deg_"):
      setattr(config.degradation, key[4:], value)
    else:
      setattr(config, key, value)
  return config


def write_png(path, array):
  Image.fromarray(array).save(path)
  return path


def write_png16_rgb(path, array):
  """Writes a 16-bit RGB PNG by hand: Pillow cannot encode one."""
  h, w, _ = array.shape
  rows = b"".join(b"\x00" + array[i].astype(">u2").tobytes() for i in range(h))

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

  header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
  path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                   + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
  return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  """Six random 40x48 RGB photos for training and two for evaluation."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for split, count in (("train", 6), ("eval", 2)):
    (root / split).mkdir()
    for i in range(count):
      write_png(root / split / f"img{i}.png", rng.integers(0, 256, (40, 48, 3), np.uint8))
  return root


def folder_config(image_dir, **overrides):
  defaults = dict(source="folder", train_dir=str(image_dir / "train"),
                  eval_dir=str(image_dir / "eval"), crop_size=16, deg_kind="noise")
  return data_config(**{**defaults, **overrides})


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["lq"], y["lq"])
    np.testing.assert_array_equal(x["gt"], y["gt"])


# ---------------------------------------------------------------- sources


def test_embedded_split_is_fixed_offline_and_float_rgb(monkeypatch):
  assert not set(sources.EMBEDDED_TRAIN) & set(sources.EMBEDDED_EVAL)

  def no_network(*args, **kwargs):
    raise AssertionError("embedded images must load without network access")

  # The photos ship inside the scikit-image wheel: decoding them must not open a socket.
  monkeypatch.setattr(socket.socket, "connect", no_network)
  sources._embedded_uint8.cache_clear()  # pylint: disable=protected-access
  for name in sources.EMBEDDED_TRAIN + sources.EMBEDDED_EVAL:
    image = sources.load_embedded(name)
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[-1] == 3
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
  assert [n for n, _ in sources.load_images(data_config(), "eval")] == list(sources.EMBEDDED_EVAL)
  # All training photos fit the paper-scale 256 crop, so none is skipped.
  assert len(sources.load_images(data_config(crop_size=256), "train")) == len(
      sources.EMBEDDED_TRAIN)


def test_folder_converts_grayscale_rgba_and_16bit(tmp_path):
  gray = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
  rgba = np.random.default_rng(0).integers(0, 256, (12, 10, 4), np.uint8)
  gray16 = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 500
  rgb16 = np.random.default_rng(1).integers(0, 65536, (12, 10, 3)).astype(np.uint16)
  write_png(tmp_path / "a_gray.png", gray)
  write_png(tmp_path / "b_rgba.png", rgba)
  write_png(tmp_path / "c_gray16.png", gray16)
  write_png16_rgb(tmp_path / "d_rgb16.png", rgb16)
  (tmp_path / "notes.txt").write_text("not an image")
  with pytest.warns(UserWarning, match="16-bit") as record:
    images = dict(sources.load_folder(tmp_path))
  assert sorted(images) == ["a_gray.png", "b_rgba.png", "c_gray16.png", "d_rgb16.png"]
  assert any("c_gray16.png" in str(w.message) for w in record)
  assert any("d_rgb16.png" in str(w.message) for w in record)
  for image in images.values():
    assert image.shape == (12, 10, 3) and image.dtype == np.float32
  np.testing.assert_allclose(images["a_gray.png"][..., 1], gray / 255.0, atol=1e-6)
  np.testing.assert_allclose(images["b_rgba.png"], rgba[..., :3] / 255.0, atol=1e-6)
  np.testing.assert_allclose(images["c_gray16.png"][..., 2], gray16 / 65535.0, atol=1e-6)
  np.testing.assert_allclose(images["d_rgb16.png"], (rgb16 >> 8) / 255.0, atol=1e-6)


def test_corrupt_file_error_names_the_file(tmp_path):
  write_png(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
  (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
  with pytest.raises(ValueError, match="broken.jpg"):
    sources.load_folder(tmp_path)


def test_missing_or_empty_directory_errors_name_it_and_the_extensions(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nowhere.*\.png.*\.webp"):
    sources.list_image_files(tmp_path / "nowhere")
  (tmp_path / "readme.txt").write_text("no images here")
  with pytest.raises(ValueError, match=rf"{tmp_path.name}.*\.jpeg"):
    sources.list_image_files(tmp_path)
  with pytest.raises(ValueError, match="data.train_dir"):
    choose_source.make_source(data_config(source="folder"), "train")


def test_small_images_skip_warns_and_error_raises(tmp_path):
  write_png(tmp_path / "big.png", np.zeros((32, 32, 3), np.uint8))
  write_png(tmp_path / "tiny.png", np.zeros((20, 40, 3), np.uint8))
  config = data_config(source="folder", train_dir=str(tmp_path), crop_size=24)
  with pytest.warns(UserWarning, match=r"tiny.png.*20x40"):
    assert list(choose_source.make_source(config, "train").names) == ["big.png"]
  config.small_images = "error"
  with pytest.raises(ValueError, match=r"tiny.png.*20x40.*crop_size=24"):
    choose_source.make_source(config, "train")
  config.small_images, config.crop_size = "skip", 64
  with pytest.raises(ValueError, match="No training image"), pytest.warns(UserWarning):
    choose_source.make_source(config, "train")


def test_image_source_is_random_access_and_read_only():
  source = sources.ImageSource([("a", np.zeros((4, 5, 3))), ("b", np.ones((6, 7, 3)))])
  assert len(source) == 2
  record = source[1]
  assert record["index"] == 1 and record["image"].shape == (6, 7, 3)
  assert record["image"].dtype == np.float32 and not record["image"].flags.writeable


# ---------------------------------------------------------------- degradations


def spec(kind, noise=(0.0, 0.0), blur=(0.0, 0.0), size=15, scale=4):
  ranges = op_ranges.OpRanges(noise_sigma=noise, blur_sigma=blur, blur_kernel_size=size,
                        motion_length=(3.0, 3.0))
  return degradations.DegradationSpec(kind, scale=scale if kind == "bicubic" else 1,
                                      ranges=ranges)


def test_noise_std_matches_sigma_on_flat_grey():
  grey = np.full((256, 256, 3), 0.5, np.float32)
  lq = degradations.degrade(grey, np.random.default_rng(0), spec("noise", noise=(20.0, 20.0)))
  assert lq.dtype == np.float32 and lq.shape == grey.shape
  assert abs(lq.std() - 20.0 / 255.0) < 0.002 and abs(lq.mean() - 0.5) < 0.002
  # Clipped to [0, 1], like an 8-bit photograph.
  lq = degradations.degrade(grey, np.random.default_rng(0), spec("noise", noise=(200.0, 200.0)))
  assert lq.min() == 0.0 and lq.max() == 1.0


def test_noise_sigma_is_drawn_from_the_range():
  grey = np.full((64, 64, 3), 0.5, np.float32)
  stds = [degradations.degrade(grey, np.random.default_rng(i), spec("noise", noise=(5, 25))).std()
          for i in range(30)]
  assert 4.5 / 255 < min(stds) < 10 / 255 and 20 / 255 < max(stds) < 25.5 / 255


def test_gaussian_kernel_is_normalized_and_symmetric():
  kernel = kernels.gaussian_kernel1d(1.5, 15)
  assert kernel.shape == (15,) and abs(kernel.sum() - 1.0) < 1e-6
  np.testing.assert_allclose(kernel, kernel[::-1])
  assert kernel.argmax() == 7
  np.testing.assert_allclose(kernel[8] / kernel[7], np.exp(-0.5 / 1.5**2), rtol=1e-5)


def test_blur_keeps_constant_mean_and_reduces_variance():
  constant = np.full((33, 40, 3), 0.3, np.float32)
  blurred = kernels.gaussian_blur(constant, 2.0, 15)
  np.testing.assert_allclose(blurred, constant, atol=1e-6)
  noise = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
  blurred = degradations.degrade(noise, np.random.default_rng(0), spec("blur", blur=(1.5, 1.5)))
  assert blurred.shape == noise.shape and blurred.dtype == np.float32
  assert blurred.var() < 0.2 * noise.var()
  assert abs(blurred.mean() - noise.mean()) < 0.01


def test_blur_is_separable_gaussian_with_reflect_borders():
  impulse = np.zeros((21, 21, 1), np.float32)
  impulse[10, 10] = 1.0
  kernel = kernels.gaussian_kernel1d(1.0, 7)
  out = kernels.gaussian_blur(impulse, 1.0, 7)[..., 0]
  np.testing.assert_allclose(out[7:14, 7:14], np.outer(kernel, kernel), atol=1e-7)
  edge = np.zeros((9, 9, 1), np.float32)
  edge[0] = 1.0  # Reflect padding (edge not repeated) mirrors row 0 about itself.
  out = kernels.gaussian_blur(edge, 1.0, 3)[..., 0]
  k = kernels.gaussian_kernel1d(1.0, 3)
  np.testing.assert_allclose(out[0], k[1], rtol=1e-6)
  np.testing.assert_allclose(out[1], k[0], rtol=1e-6)


def test_noise_blur_and_determinism():
  clean = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
  cfg = spec("noise_blur", noise=(5, 25), blur=(0.5, 2.0))
  a = degradations.make_pair(clean, np.random.default_rng(7), cfg)
  b = degradations.make_pair(clean, np.random.default_rng(7), cfg)
  c = degradations.make_pair(clean, np.random.default_rng(8), cfg)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])
  np.testing.assert_array_equal(a[1], clean)
  assert 0.0 <= a[0].min() and a[0].max() <= 1.0


def test_degradation_validation_lists_kinds():
  with pytest.raises(ValueError, match=r"'jpeg'.*noise.*blur.*noise_blur.*bicubic"):
    degradations.degrade(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0),
                         data_config(deg_kind="jpeg").degradation)
  with pytest.raises(ValueError, match="odd"):
    spec("blur", size=4)
  with pytest.raises(ValueError, match="noise_sigma"):
    spec("noise", noise=(10.0, 5.0))
  assert degradations.as_spec(data_config().degradation).kind == "noise_blur"


def test_modcrop():
  assert degradations.modcrop(np.zeros((67, 70, 3)), 4).shape == (64, 68, 3)


def test_bicubic_pair_is_modcropped_hr_and_lr():
  rng = np.random.default_rng(0)
  clean = rng.random((67, 70, 3)).astype(np.float32)
  lq, gt = degradations.make_pair(clean, rng, spec("bicubic", scale=4))
  assert gt.shape == (64, 68, 3) and lq.shape == (16, 17, 3)
  assert lq.dtype == np.float32 and gt.dtype == np.float32
  np.testing.assert_array_equal(gt, clean[:64, :68])
  np.testing.assert_array_equal(degradations.degrade(clean, rng, spec("bicubic", scale=4)), lq)
  np.testing.assert_allclose(lq * 255, np.round(lq * 255), atol=1e-4)  # uint8 levels.
  flat = np.full((32, 32, 3), 64 / 255, np.float32)
  np.testing.assert_allclose(degradations.degrade(flat, rng, spec("bicubic", scale=2)), 64 / 255,
                             atol=1e-6)


# ---------------------------------------------------------------- pipeline


def test_augment_pair_applies_the_same_of_all_eight_transforms():
  gt = np.arange(4 * 4 * 3, dtype=np.float32).reshape(4, 4, 3)
  seen = set()
  for seed in range(64):
    lq, out = pipeline.augment_pair(gt * 2, gt, np.random.default_rng(seed))
    np.testing.assert_array_equal(lq, out * 2)
    seen.add(out.tobytes())
  assert len(seen) == 8


def test_random_crop_aligns_to_the_scale_grid():
  image = np.arange(50 * 50, dtype=np.float32).reshape(50, 50, 1)
  for seed in range(20):
    crop = pipeline.random_crop(image, 16, np.random.default_rng(seed), step=4)
    top, left = divmod(int(crop[0, 0, 0]), 50)
    assert crop.shape == (16, 16, 1) and top % 4 == 0 and left % 4 == 0


def test_train_batches_shapes_dtypes_and_alignment(image_dir):
  # With zero noise the only difference between lq and gt could come from misalignment.
  config = folder_config(image_dir, deg_noise_sigma=(0.0, 0.0), augment=True)
  batch = next(iter(pipeline.make_train_dataset(config, seed=0, batch_size=4)))
  assert set(batch) == {"lq", "gt"}
  for value in batch.values():
    assert value.shape == (4, 16, 16, 3) and value.dtype == np.float32
  np.testing.assert_array_equal(batch["lq"], batch["gt"])


def test_degradation_override_is_used(image_dir):
  config = folder_config(image_dir, deg_noise_sigma=(0.0, 0.0))
  override = data_config(deg_kind="noise", deg_noise_sigma=(50.0, 50.0)).degradation
  batch = next(iter(pipeline.make_train_dataset(config, seed=0, batch_size=2,
                                                degradation=override)))
  assert np.abs(batch["lq"] - batch["gt"]).mean() > 0.05


def test_bicubic_train_batches(image_dir):
  config = folder_config(image_dir, deg_kind="bicubic", deg_scale=4)
  batch = next(iter(pipeline.make_train_dataset(config, seed=0, batch_size=2)))
  assert batch["gt"].shape == (2, 16, 16, 3) and batch["lq"].shape == (2, 4, 4, 3)
  with pytest.raises(ValueError, match="multiple"):
    pipeline.make_train_dataset(folder_config(image_dir, deg_kind="bicubic", deg_scale=3),
                                seed=0, batch_size=2)


def test_same_seed_same_batches_different_seed_different(image_dir):
  config = folder_config(image_dir, deg_kind="noise_blur")
  run = lambda seed: take(iter(pipeline.make_train_dataset(config, seed=seed, batch_size=3)), 4)
  first = run(0)
  assert_batches_equal(first, run(0))
  assert not np.array_equal(first[0]["gt"], run(1)[0]["gt"])
  assert not np.array_equal(first[0]["gt"], first[1]["gt"])


def test_iterator_state_resumes_exactly(image_dir):
  config = folder_config(image_dir, deg_kind="noise_blur")
  iterator = iter(pipeline.make_train_dataset(config, seed=3, batch_size=4))
  take(iterator, 3)  # More than one epoch of 6 images: crosses the reshuffle.
  state = iterator.get_state()
  expected = take(iterator, 3)
  restored = iter(pipeline.make_train_dataset(config, seed=3, batch_size=4))
  restored.set_state(state)
  assert_batches_equal(take(restored, 3), expected)


def test_processes_read_disjoint_records_that_interleave_to_the_global_stream(image_dir):
  config = folder_config(image_dir, deg_kind="noise")
  shards = [take(iter(pipeline.make_train_dataset(
      config, seed=0, batch_size=4, process_index=p, process_count=2)), 3) for p in range(2)]
  single = take(iter(pipeline.make_train_dataset(config, seed=0, batch_size=4)), 3)
  for step in range(3):
    assert shards[0][step]["gt"].shape == (2, 16, 16, 3)
    interleaved = np.stack([shards[p][step]["gt"][i] for i in range(2) for p in range(2)])
    np.testing.assert_array_equal(interleaved, single[step]["gt"])

  class Index(pipeline.grain.transforms.RandomMap):
    def random_map(self, element, rng):
      return element["index"]

  source = choose_source.make_source(config, "train")
  records = [list(pipeline.sharded_stream(source, Index(), seed=0, process_index=p,
                                          process_count=2)[:3]) for p in range(2)]
  assert not set(records[0]) & set(records[1])
  assert sorted(records[0] + records[1]) == list(range(6))
  with pytest.raises(ValueError, match="multiple"):
    pipeline.make_train_dataset(config, seed=0, batch_size=3, process_count=2)


def test_eval_set_is_deterministic_and_cropped(image_dir):
  config = folder_config(image_dir, deg_kind="noise_blur", eval_max_size=32)
  first = pipeline.make_eval_set(config, seed=0)
  second = pipeline.make_eval_set(config, seed=0)
  assert [e["name"] for e in first] == ["img0.png", "img1.png"]
  for a, b in zip(first, second):
    assert a["gt"].shape == a["lq"].shape == (32, 32, 3) and a["lq"].dtype == np.float32
    np.testing.assert_array_equal(a["lq"], b["lq"])
  other = pipeline.make_eval_set(config, seed=1)
  assert not np.array_equal(first[0]["lq"], other[0]["lq"])
  np.testing.assert_array_equal(first[0]["gt"], other[0]["gt"])
  assert not np.array_equal(first[0]["lq"], first[1]["lq"])


def test_embedded_eval_set_full_size():
  examples = pipeline.make_eval_set(data_config(eval_max_size=0), seed=0)
  assert [e["name"] for e in examples] == list(sources.EMBEDDED_EVAL)
  assert examples[0]["gt"].shape == (512, 512, 3)


def test_bicubic_eval_set_is_a_multiple_of_the_scale(image_dir):
  config = folder_config(image_dir, deg_kind="bicubic", deg_scale=3, eval_max_size=0)
  for example in pipeline.make_eval_set(config, seed=0):
    assert example["gt"].shape == (39, 48, 3) and example["lq"].shape == (13, 16, 3)


def test_worker_processes_give_the_same_batches(image_dir):
  config = folder_config(image_dir, deg_kind="noise_blur")
  expected = take(iter(pipeline.make_train_dataset(config, seed=5, batch_size=2)), 4)
  config.num_workers = 2
  iterator = iter(pipeline.make_train_dataset(config, seed=5, batch_size=2))
  try:
    assert_batches_equal(take(iterator, 4), expected)
  finally:
    iterator.close()


def test_data_modules_do_not_import_jax():
  """Workers are spawned and must stay numpy-only (they must not touch JAX)."""
  code = ("import sys; import sr_jax.data.sources, sr_jax.data.degradations; "
          "assert 'jax' not in sys.modules, 'jax imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
  # grain itself imports jax when it is installed, so pipeline.py is checked statically.
  for module in ("pipeline", "sources", "degradations", "ops", "preview", "tfds_source"):
    tree = ast.parse((REPO / "sr_jax" / "data" / f"{module}.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(m and m.split(".")[0] in ("jax", "flax") for m in imported), module


def test_eval_crops_spread_over_each_image_and_are_degraded_apart():
  """data.eval_crops = 4: four crops of each held-out photo, at the centres of a 2x2 grid of
  cells, each its own window of the photo (gt equals the photo there), each degraded with its
  own rng; one crop keeps today's centre crop."""
  assert pipeline.crop_windows(512, 512, 128, 4) == [(64, 64), (64, 320), (320, 64), (320, 320)]
  assert pipeline.crop_windows(400, 600, 128, 1) == [(136, 236)]  # The centre.
  assert pipeline.crop_windows(100, 100, 128, 2) == [(0, 0), (0, 0)]  # Clipped to the image.
  config = data_config(eval_max_size=128, eval_crops=4, deg_kind="chain", deg_ops=("haze",))
  examples = pipeline.make_eval_set(config, seed=0)
  assert len(examples) == 4 * len(sources.EMBEDDED_EVAL)
  assert [e["name"] for e in examples[:2]] == ["astronaut_crop0", "astronaut_crop1"]
  photo = sources.load_embedded("astronaut")
  for example, (top, left) in zip(examples, pipeline.crop_windows(512, 512, 128, 4)):
    np.testing.assert_array_equal(example["gt"], photo[top:top + 128, left:left + 128])
  assert not np.array_equal(examples[0]["lq"], examples[1]["lq"])
  single = pipeline.make_eval_set(data_config(eval_max_size=128, deg_kind="chain",
                                              deg_ops=("haze",)), seed=0)
  np.testing.assert_array_equal(single[0]["gt"], photo[192:320, 192:320])


def test_train_image_side_is_the_median_short_side(image_dir):
  assert pipeline.train_image_side(data_config()) == 512  # Embedded training photos.
  assert pipeline.train_image_side(folder_config(image_dir)) == 40  # Six 40x48 images.
  assert pipeline.train_image_side(data_config(embedded_set="documents", crop_size=64)) == 191
