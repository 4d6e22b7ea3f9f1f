"""Tests for PROD chains, SR pairs, paired and lazy folder sources, and the preview grid."""

import collections

import numpy as np
from PIL import Image
import pytest

from configs import prod_nafnet
from sr_jax.config import config_base
from sr_jax.data import choose_source, degradations, op_ranges, ops, pipeline, preview, sources

OPS5 = ("gaussian_blur", "motion_blur", "gaussian_noise", "jpeg", "rain")


def prod_spec(kind="prod", min_ops=1, max_ops=3, scale=1, resize="bicubic", chain_ops=OPS5):
  return degradations.DegradationSpec(kind, chain_ops, min_ops, max_ops, scale, resize)


def photo(size=48, seed=0):
  """A smooth image with texture, so every op visibly changes it."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:size, :size] / size
  base = np.stack([0.5 + 0.3 * np.sin(6 * x), 0.4 + 0.3 * y, 0.3 + 0.2 * np.cos(5 * y)], -1)
  return np.clip(base + 0.05 * rng.standard_normal(base.shape), 0, 1).astype(np.float32)


# ---------------------------------------------------------------- chains


def test_prod_chains_vary_in_membership_and_order_within_the_count_range():
  spec = prod_spec()
  chains = [degradations.choose_ops(np.random.default_rng([0, i]), spec) for i in range(400)]
  assert all(1 <= len(c) <= 3 and len(set(c)) == len(c) for c in chains)
  assert {len(c) for c in chains} == {1, 2, 3}
  assert set().union(*chains) == set(OPS5)
  orders = collections.defaultdict(set)
  for c in chains:
    orders[frozenset(c)].add(c)
  # Some subset appears in more than one order: the order itself is random.
  assert max(len(v) for v in orders.values()) >= 2
  assert any(c != tuple(sorted(c, key=OPS5.index)) for c in chains)


def test_fixed_keeps_the_listed_order_single_picks_one_chain_takes_all():
  fixed = [degradations.choose_ops(np.random.default_rng(i), prod_spec("fixed"))
           for i in range(200)]
  assert all(c == tuple(sorted(c, key=OPS5.index)) for c in fixed)
  assert len({frozenset(c) for c in fixed}) > 10
  single = [degradations.choose_ops(np.random.default_rng(i), prod_spec("single"))
            for i in range(100)]
  assert all(len(c) == 1 for c in single) and {c[0] for c in single} == set(OPS5)
  assert degradations.choose_ops(np.random.default_rng(0), prod_spec("chain")) == OPS5
  noise_blur = degradations.DegradationSpec("noise_blur")
  assert degradations.choose_ops(np.random.default_rng(0), noise_blur) == (
      "gaussian_blur", "gaussian_noise")


def test_a_sample_is_a_function_of_its_rng_seed():
  spec, clean = prod_spec(), photo()
  a = degradations.degrade_with_chain(clean, np.random.default_rng([7, 3]), spec)
  b = degradations.degrade_with_chain(clean, np.random.default_rng([7, 3]), spec)
  np.testing.assert_array_equal(a[0], b[0])
  assert a[2] == b[2]
  others = [degradations.degrade_with_chain(clean, np.random.default_rng([7, i]), spec)
            for i in range(4, 12)]
  assert any(o[2] != a[2] for o in others)
  assert all(not np.array_equal(o[0], a[0]) for o in others)
  assert a[0].dtype == np.float32 and 0 <= a[0].min() and a[0].max() <= 1


def test_apply_chain_applies_the_ops_in_order():
  clean = photo()
  chain = (("jpeg", {"quality": 20}), ("gaussian_noise", {"sigma": 10.0, "gray": False}))
  out = degradations.apply_chain(clean, chain, np.random.default_rng(1))
  rng = np.random.default_rng(1)
  expected = ops.apply_op("gaussian_noise", ops.apply_op("jpeg", clean, rng, chain[0][1]), rng,
                          chain[1][1])
  np.testing.assert_array_equal(out, expected)
  reversed_out = degradations.apply_chain(clean, chain[::-1], np.random.default_rng(1))
  assert not np.allclose(out, reversed_out, atol=1e-3)  # JPEG and noise do not commute.
  assert "jpeg(q=20) > gaussian_noise(s=10)" == degradations.describe(chain)


def test_prod_pipeline_record_is_reproducible_from_seed_and_index():
  config = config_base.base_config().data
  prod_nafnet.prod_degradation(config.degradation)
  config.crop_size = 32
  transform = pipeline.RandomCropPair(32, config.degradation)
  source = choose_source.make_source(config, "train")
  stream = pipeline.sharded_stream(source, transform, seed=11)
  again = pipeline.sharded_stream(source, transform, seed=11)
  # Random access to record 37 equals reading it after others: no hidden iteration state.
  for _ in range(3):
    _ = again[5]
  np.testing.assert_array_equal(stream[37]["lq"], again[37]["lq"])
  assert not np.array_equal(stream[37]["lq"], stream[38]["lq"])
  other_seed = pipeline.sharded_stream(source, transform, seed=12)
  assert not np.array_equal(stream[37]["lq"], other_seed[37]["lq"])


def test_spec_validation_names_the_key_and_the_fix():
  with pytest.raises(ValueError, match=r"degradation.ops.*unknown: \['snow'\]"):
    prod_spec(chain_ops=("jpeg", "snow"))
  with pytest.raises(ValueError, match=r"max_ops=6.*len\(degradation.ops\)=5"):
    prod_spec(max_ops=6)
  with pytest.raises(ValueError, match="twice"):
    prod_spec(chain_ops=("jpeg", "jpeg"))
  with pytest.raises(ValueError, match="degradation.resize.*nearest"):
    prod_spec(resize="lanczos")
  with pytest.raises(ValueError, match="'bicubic'.*>= 2"):
    degradations.DegradationSpec("bicubic", scale=1)
  with pytest.raises(ValueError, match="kind='bicubic'.*resize='area'.*kind='none'"):
    degradations.DegradationSpec("bicubic", scale=2, resize="area")
  # Small blur kernels (valid for Gaussian blur) only clash with motion blur when it is used.
  small = op_ranges.OpRanges(blur_kernel_size=7, motion_length=(5.0, 15.0))
  assert degradations.DegradationSpec("blur", ranges=small).kind == "blur"
  with pytest.raises(ValueError, match=r"motion_length.*blur_kernel_size \(7\)"):
    degradations.DegradationSpec("prod", OPS5, ranges=small)
  config = config_base.degradation_config()
  config.kind = "prod"
  spec = degradations.as_spec(config)
  assert spec.ops == tuple(config.ops) and spec.ranges.jpeg_quality == (30, 95)


# ---------------------------------------------------------------- SR pairs


def area(image, s):
  h, w = image.shape[0] // s, image.shape[1] // s
  return image[:h * s, :w * s].reshape(h, s, w, s, -1).mean(axis=(1, 3))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_synthetic_sr_pairs_are_aligned_after_augmentation(scale):
  config = config_base.base_config().data
  config.degradation.kind, config.degradation.scale = "none", scale
  config.degradation.resize = "area"
  config.crop_size = 12 * scale
  transform = pipeline.RandomCropPair(config.crop_size, config.degradation, augment=True)
  source = sources.ImageSource([("a", photo(60))])
  for seed in range(6):
    pair = transform.random_map(source[0], np.random.default_rng(seed))
    assert pair["gt"].shape == (12 * scale, 12 * scale, 3) and pair["lq"].shape == (12, 12, 3)
    # Area downscaling commutes with flips and transposes, so alignment shows as equality.
    np.testing.assert_allclose(pair["lq"], np.round(area(pair["gt"], scale) * 255) / 255,
                               atol=1e-6)


def stored_lr(gt, scale):
  """The LR levels write_pairs stores for this GT (area mean of its uint8 levels, rounded)."""
  return np.round(area(np.round(gt * 255).astype(np.float64), scale))


@pytest.mark.parametrize("scale", [2, 3])
def test_sr_with_a_chain_degrades_the_lr_image(scale):
  config = config_base.base_config().data
  prod_nafnet.prod_degradation(config.degradation)
  config.degradation.scale, config.crop_size = scale, 12 * scale
  transform = pipeline.RandomCropPair(config.crop_size, config.degradation, augment=False)
  pair = transform.random_map(sources.ImageSource([("a", photo(80))])[0],
                              np.random.default_rng(0))
  assert pair["lq"].shape == (12, 12, 3) and pair["gt"].shape == (12 * scale, 12 * scale, 3)
  clean_lr = degradations.downscale_to_lr(pair["gt"], scale)
  assert np.abs(pair["lq"] - clean_lr).mean() > 1e-3  # The chain acted on the LR image.
  config.eval_max_size = 0
  # Eval: clean images modcropped to the scale, LR degraded by the chain.
  examples = pipeline.make_eval_set(config, seed=0)
  for e in examples:
    assert e["gt"].shape[0] % scale == 0 and e["gt"].shape[0] == e["lq"].shape[0] * scale


def test_stored_pairs_with_a_few_extra_gt_pixels_are_cropped_in_training():
  rng = np.random.default_rng(0)
  gt = rng.random((26, 25, 3)).astype(np.float32)  # 3 x (8, 8) plus 2 and 1 extra pixels.
  lq = np.round(area(gt[:24, :24], 3) * 255) / 255
  transform = pipeline.RandomCropPair(12, degradations.DegradationSpec("none", scale=3))
  for seed in range(4):
    pair = transform.random_map({"image": gt, "lq": lq, "index": 0}, np.random.default_rng(seed))
    np.testing.assert_allclose(pair["lq"], np.round(area(pair["gt"], 3) * 255) / 255, atol=1e-6)
  with pytest.raises(ValueError, match=r"Record 0.*GT is 30x24 but LQ is 8x8"):
    transform.random_map({"image": np.zeros((30, 24, 3)), "lq": lq, "index": 0},
                         np.random.default_rng(0))


def test_paired_names_match_exactly_before_the_div2k_suffix(tmp_path):
  lq_files = [tmp_path / "img_x2.png", tmp_path / "0001x2.png"]
  gt_files = [tmp_path / "img_x2.png", tmp_path / "0001.png"]
  pairs = sources.match_pairs(lq_files, gt_files, 2, "here")
  assert {(a.name, b.name) for a, b in pairs} == {("img_x2.png", "img_x2.png"),
                                                  ("0001x2.png", "0001.png")}


def write_pairs(root, scale, names=("0001", "0002", "0003"), lq_suffix=""):
  (root / "lq").mkdir(parents=True)
  (root / "gt").mkdir(parents=True)
  rng = np.random.default_rng(scale)
  for name in names:
    gt = rng.integers(0, 256, (10 * scale, 12 * scale, 3)).astype(np.uint8)
    lq = np.round(area(gt.astype(np.float64), scale)).astype(np.uint8)
    Image.fromarray(gt).save(root / "gt" / f"{name}.png")
    Image.fromarray(lq).save(root / "lq" / f"{name}{lq_suffix}.png")
  return root


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_paired_folder_crops_are_aligned_for_scale(tmp_path, scale):
  root = write_pairs(tmp_path, scale, lq_suffix=f"x{scale}")  # DIV2K's LR names.
  config = config_base.base_config().data
  config.source, config.train_dir, config.train_lq_dir = "paired", str(root / "gt"), str(root / "lq")
  config.eval_dir, config.eval_lq_dir = config.train_dir, config.train_lq_dir
  config.crop_size, config.degradation.scale = 6 * scale, scale
  batch = next(iter(pipeline.make_train_dataset(config, seed=0, batch_size=6)))
  assert batch["gt"].shape == (6, 6 * scale, 6 * scale, 3) and batch["lq"].shape == (6, 6, 6, 3)
  for lq, gt in zip(batch["lq"], batch["gt"]):
    np.testing.assert_array_equal(stored_lr(gt, scale), np.round(lq * 255))
  config.eval_max_size = 5 * scale
  for example in pipeline.make_eval_set(config, seed=0):
    assert example["lq"].shape == (5, 5, 3) and example["gt"].shape == (5 * scale,) * 2 + (3,)
    np.testing.assert_array_equal(stored_lr(example["gt"], scale), np.round(example["lq"] * 255))


def test_paired_folder_errors_list_unmatched_names_and_wrong_scale(tmp_path):
  root = write_pairs(tmp_path, 2)
  Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(root / "gt" / "extra_gt.png")
  Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "lq" / "stray.png")
  with pytest.raises(ValueError, match=r"LQ files without a GT: stray.png.*GT files without "
                                       r"an LQ: extra_gt.png"):
    sources.PairedFolderSource(str(root / "lq"), str(root / "gt"), scale=2)
  (root / "gt" / "extra_gt.png").unlink()
  (root / "lq" / "stray.png").unlink()
  with pytest.raises(ValueError, match=r"0001.png.*GT is 20x24 but LQ is 10x12.*scale=3"):
    sources.PairedFolderSource(str(root / "lq"), str(root / "gt"), scale=3)
  source = sources.PairedFolderSource(str(root / "lq"), str(root / "gt"), scale=2)
  assert len(source) == 3 and source[1]["lq"].shape == (10, 12, 3)


def test_folder_source_is_lazy_and_names_a_corrupt_file(tmp_path):
  Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
  Image.fromarray(np.zeros((8, 40, 3), np.uint8)).save(tmp_path / "small.png")
  with pytest.warns(UserWarning, match=r"small.png.*8x40"):
    source = sources.FolderSource.for_training(str(tmp_path), 32, "skip")
  assert source.names == ("a.png",)
  # Replaced after listing: the source decodes on read, and the error names the file.
  (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  with pytest.raises(ValueError, match="a.png"):
    source[0]  # pylint: disable=pointless-statement


# ---------------------------------------------------------------- workers, preview


def test_prod_batches_resume_exactly_in_worker_processes():
  config = config_base.base_config().data
  prod_nafnet.prod_degradation(config.degradation)
  config.crop_size = 32
  uninterrupted = take(pipeline.make_train_dataset(config, seed=4, batch_size=2), 6)
  config.num_workers = 1
  iterator = iter(pipeline.make_train_dataset(config, seed=4, batch_size=2))
  try:
    _ = [next(iterator) for _ in range(3)]
    state = iterator.get_state()
  finally:
    iterator.close()
  restored = iter(pipeline.make_train_dataset(config, seed=4, batch_size=2))
  try:
    restored.set_state(state)
    resumed = [next(restored) for _ in range(3)]
  finally:
    restored.close()
  for got, want in zip(resumed, uninterrupted[3:]):
    np.testing.assert_array_equal(got["lq"], want["lq"])
    np.testing.assert_array_equal(got["gt"], want["gt"])


def take(dataset, n):
  iterator = iter(dataset)
  return [next(iterator) for _ in range(n)]


def test_preview_grid_shows_the_clean_crop_each_op_and_chains():
  config = config_base.base_config().data
  prod_nafnet.prod_degradation(config.degradation)
  config.crop_size = 128
  grid = preview.degradation_grid(config, seed=0, num_chains=6)
  columns = 1 + len(OPS5)
  rows = -(-(1 + len(OPS5) + 6) // columns)
  assert grid.dtype == np.uint8 and grid.shape[1:] == (columns * 132, 3)
  tile_h = grid.shape[0] // rows - 4  # Captions wrap in full: the strip holds >= one line.
  assert grid.shape[0] == rows * (tile_h + 4) and (tile_h - 128 - 4) % 12 == 0
  assert tile_h >= 128 + 12 + 4
  clean = pipeline.center_crop(choose_source.make_source(config, "train")[0]["image"], 128)
  np.testing.assert_array_equal(grid[:128, :128], np.round(clean * 255).astype(np.uint8))
  assert not np.array_equal(grid[:128, 132:260], grid[:128, :128])


def test_preview_command_writes_the_grid(tmp_path):
  import subprocess, sys, pathlib  # pylint: disable=g-import-not-at-top,multiple-imports
  repo = pathlib.Path(__file__).resolve().parents[1]
  out = tmp_path / "grid.png"
  proc = subprocess.run(
      [sys.executable, "-m", "sr_jax.data.preview", "--config", "configs/prod_nafnet.py:demo",
       "--output", str(out), "--chains", "3", "--config.data.degradation.kind=single"],
      cwd=repo, capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "degradation 'single'" in proc.stdout
  grid = np.asarray(Image.open(out))
  assert grid.shape[2] == 3 and grid.shape[1] == (1 + len(OPS5)) * 132
