"""Tests for sr_jax.quality.metrics against an independent float64 numpy implementation of the
protocol.

The reference below is written from the protocol's definition (BasicSR's calculate_psnr /
calculate_ssim) with plain loops, so a mistake in rounding, cropping, the Y formula, the window
or float32 accuracy in sr_jax.quality.metrics shows up as a mismatch.
"""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from sr_jax.quality import metrics

_REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Independent float64 reference.


def _ref_prepare(img: np.ndarray, crop: int, y_channel: bool) -> np.ndarray:
  """[0, 1] float image -> rounded 0..255 float64, cropped, optionally MATLAB Y (H, W, C')."""
  x = np.round(np.clip(img.astype(np.float64), 0.0, 1.0) * 255.0)
  if crop:
    x = x[crop:-crop, crop:-crop]
  if y_channel:
    x = (16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0)[..., None]
  return x


def _ref_psnr(pred: np.ndarray, gt: np.ndarray, crop: int, y_channel: bool) -> float:
  a, b = _ref_prepare(pred, crop, y_channel), _ref_prepare(gt, crop, y_channel)
  mse = np.mean((a - b) ** 2)
  return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def _ref_filter(x: np.ndarray, window: np.ndarray) -> np.ndarray:
  """'valid' 2-D correlation with explicit loops over the window taps."""
  k = window.shape[0]
  h, w = x.shape[0] - k + 1, x.shape[1] - k + 1
  out = np.zeros((h, w))
  for i in range(k):
    for j in range(k):
      out += window[i, j] * x[i:i + h, j:j + w]
  return out


def _ref_ssim(pred: np.ndarray, gt: np.ndarray, crop: int, y_channel: bool) -> float:
  a, b = _ref_prepare(pred, crop, y_channel), _ref_prepare(gt, crop, y_channel)
  t = np.arange(11) - 5.0
  g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
  g /= g.sum()
  window = np.outer(g, g)
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  values = []
  for c in range(a.shape[-1]):
    x, y = a[..., c], b[..., c]
    mx, my = _ref_filter(x, window), _ref_filter(y, window)
    sxx = _ref_filter(x * x, window) - mx ** 2
    syy = _ref_filter(y * y, window) - my ** 2
    sxy = _ref_filter(x * y, window) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    values.append(ssim_map.mean())
  return float(np.mean(values))


def _pair(seed: int, shape=(2, 48, 64, 3), noise: float | None = 0.05):
  """A random gt batch and a prediction: gt + Gaussian noise, or an unrelated image if None."""
  rng = np.random.default_rng(seed)
  gt = rng.random(shape).astype(np.float32)
  if noise is None:
    pred = rng.random(shape).astype(np.float32)
  else:
    pred = (gt + rng.normal(0.0, noise, shape)).astype(np.float32)  # Partly outside [0, 1].
  return pred, gt


# ----------------------------------------------------------------------------------------------
# Agreement with the reference.


@pytest.mark.parametrize("crop", [0, 4])
@pytest.mark.parametrize("y_channel", [False, True])
def test_matches_float64_reference(crop, y_channel):
  pred, gt = _pair(0)
  pred[1] = _pair(1, noise=None)[0][1]  # Second image: unrelated (low PSNR, SSIM near 0).
  got_p = np.asarray(metrics.psnr(pred, gt, crop_border=crop, y_channel=y_channel))
  got_s = np.asarray(metrics.ssim(pred, gt, crop_border=crop, y_channel=y_channel))
  assert got_p.shape == got_s.shape == (2,)
  for n in range(2):
    np.testing.assert_allclose(got_p[n], _ref_psnr(pred[n], gt[n], crop, y_channel),
                               rtol=0, atol=1e-4)
    np.testing.assert_allclose(got_s[n], _ref_ssim(pred[n], gt[n], crop, y_channel),
                               rtol=0, atol=1e-5)


def test_ssim_accurate_on_flat_bright_images():
  """E[x^2] - E[x]^2 in float32 is off by ~3e-5 here; the local-deviation form is not."""
  rng = np.random.default_rng(3)
  gt = (250 + rng.integers(-1, 2, (48, 64, 3))) / 255.0
  pred = np.clip(gt + rng.integers(-1, 2, gt.shape) / 255.0, 0, 1)
  got = float(metrics.ssim(pred.astype(np.float32), gt.astype(np.float32)))
  np.testing.assert_allclose(got, _ref_ssim(pred, gt, 0, False), rtol=0, atol=1e-6)


def test_grayscale_single_channel():
  pred, gt = _pair(4, shape=(40, 40, 1))
  np.testing.assert_allclose(float(metrics.psnr(pred, gt)), _ref_psnr(pred, gt, 0, False),
                             atol=1e-4)
  np.testing.assert_allclose(float(metrics.ssim(pred, gt)), _ref_ssim(pred, gt, 0, False),
                             atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Protocol details.


def test_identical_images():
  _, gt = _pair(5)
  assert np.all(np.isinf(np.asarray(metrics.psnr(gt, gt))))
  np.testing.assert_allclose(np.asarray(metrics.ssim(gt, gt)), 1.0, atol=1e-6)


def test_uint8_rounding():
  """Predictions within half a level of the gt round back to it; beyond, they move one level."""
  rng = np.random.default_rng(6)
  gt = (rng.integers(0, 255, (32, 32, 3)) / 255.0).astype(np.float32)  # Levels 0..254.
  assert np.isinf(float(metrics.psnr(gt + 0.4 / 255, gt)))
  assert np.isinf(float(metrics.psnr(gt - 0.4 / 255, gt)))  # Level 0 clamps back to 0.
  # +0.6 rounds every pixel up one level: MSE = 1 exactly.
  np.testing.assert_allclose(float(metrics.psnr(gt + 0.6 / 255, gt)), 10 * np.log10(255.0 ** 2),
                             atol=1e-4)
  # A truncating implementation would map 0.6/255 above k/255 back to k.
  np.testing.assert_allclose(np.asarray(metrics.to_uint8_grid(jnp.array([0.4, 0.6]) / 255)),
                             [0.0, 1.0])
  np.testing.assert_allclose(np.asarray(metrics.to_uint8_grid(jnp.array([-0.2, 1.3]))),
                             [0.0, 255.0])


def test_uint8_rounding_exact_near_ties():
  """float32 inputs next to (k + 0.5) / 255 round as the exact product x * 255 does.

  A plain float32 `round(x * 255)` gets 128 of these 765 wrong.
  """
  k = np.arange(255, dtype=np.float64)
  tie = ((k + 0.5) / 255).astype(np.float32)
  x = np.concatenate([tie, np.nextafter(tie, np.float32(1)), np.nextafter(tie, np.float32(0))])
  want = np.round(x.astype(np.float64) * 255)
  np.testing.assert_array_equal(np.asarray(jax.jit(metrics.to_uint8_grid)(x)), want)


def test_rgb_to_y_matlab_values():
  rgb = jnp.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]],
                  jnp.float32)
  np.testing.assert_allclose(np.asarray(metrics.rgb_to_y(rgb))[:, 0],
                             [16.0, 235.0, 81.481, 144.553, 40.966], atol=1e-4)


def test_batched_and_unbatched_shapes_agree():
  pred, gt = _pair(7, shape=(3, 24, 24, 3))
  batched_p = metrics.psnr(pred, gt, crop_border=2)
  batched_s = metrics.ssim(pred, gt, crop_border=2)
  assert batched_p.shape == batched_s.shape == (3,)
  single_p = metrics.psnr(pred[1], gt[1], crop_border=2)
  single_s = metrics.ssim(pred[1], gt[1], crop_border=2)
  assert single_p.shape == single_s.shape == ()
  np.testing.assert_allclose(float(single_p), float(batched_p[1]), rtol=1e-6)
  np.testing.assert_allclose(float(single_s), float(batched_s[1]), rtol=1e-6)


def test_uint8_input_equals_float_input():
  pred, gt = _pair(8, shape=(24, 24, 3))
  p8, g8 = (np.round(np.clip(v, 0, 1) * 255).astype(np.uint8) for v in (pred, gt))
  assert float(metrics.psnr(p8, g8)) == pytest.approx(float(metrics.psnr(pred, gt)), abs=1e-6)
  assert float(metrics.ssim(p8, g8)) == pytest.approx(float(metrics.ssim(pred, gt)), abs=1e-7)


def test_jit_composes():
  pred, gt = _pair(9, shape=(2, 24, 24, 3))
  fn = jax.jit(lambda p, g: (metrics.psnr(p, g, 4, True), metrics.ssim(p, g, 4, True)))
  p, s = fn(jnp.asarray(pred), jnp.asarray(gt))
  np.testing.assert_allclose(np.asarray(p), np.asarray(metrics.psnr(pred, gt, crop_border=4,
                                                                    y_channel=True)), rtol=1e-6)
  assert s.shape == (2,)


def test_invalid_inputs():
  pred, gt = _pair(10, shape=(20, 20, 1))
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.psnr(pred, gt[:-1])
  with pytest.raises(ValueError, match="RGB"):
    metrics.psnr(pred, gt, y_channel=True)
  with pytest.raises(ValueError, match="at least 11"):
    metrics.ssim(pred, gt, crop_border=5)


# ----------------------------------------------------------------------------------------------
# Command line.


def _write(folder: pathlib.Path, name: str, arr: np.ndarray) -> None:
  """Saves `arr` with Pillow (format from the suffix), creating the folder."""
  folder.mkdir(parents=True, exist_ok=True)
  Image.fromarray(arr).save(folder / name)


def _folders(tmp_path: pathlib.Path):
  """gt: two RGB images and a grayscale one; pred: matching names, other formats, one RGBA."""
  rng = np.random.default_rng(11)
  gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
  images = {}
  for name in ("baby", "bird", "gray"):
    g = rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)
    if name == "gray":
      g = np.repeat(g[..., :1], 3, axis=-1)
    p = np.clip(g.astype(int) + rng.integers(-6, 7, g.shape), 0, 255).astype(np.uint8)
    if name == "gray":
      p = np.repeat(p[..., :1], 3, axis=-1)
    images[name] = (p, g)
  _write(gt_dir, "baby.png", images["baby"][1])
  _write(gt_dir, "bird.bmp", images["bird"][1])
  _write(gt_dir, "gray.png", images["gray"][1][..., 0])  # Mode 'L'.
  rgba = np.concatenate([images["baby"][0], np.full((30, 36, 1), 7, np.uint8)], axis=-1)
  _write(pred_dir, "baby.png", rgba)  # Alpha is dropped.
  _write(pred_dir, "bird.tiff", images["bird"][0])
  _write(pred_dir, "gray.png", images["gray"][0])
  (pred_dir / "notes.txt").write_text("not an image; ignored")
  return pred_dir, gt_dir, images


def test_cli_table(tmp_path, capsys):
  pred_dir, gt_dir, images = _folders(tmp_path)
  code = metrics.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--crop-border", "2",
                       "--y-channel"])
  out = capsys.readouterr().out
  assert code == 0
  assert "PSNR/SSIM on Y channel, crop border 2, uint8-rounded (BasicSR protocol)" in out
  psnrs, ssims = [], []
  for name, (p, g) in images.items():
    p_val, s_val = (_ref_psnr(p / 255.0, g / 255.0, 2, True),
                    _ref_ssim(p / 255.0, g / 255.0, 2, True))
    psnrs.append(p_val)
    ssims.append(s_val)
    line = next(l for l in out.splitlines() if l.startswith(name + " "))
    assert float(line.split()[1]) == pytest.approx(p_val, abs=1e-4)
    assert float(line.split()[2]) == pytest.approx(s_val, abs=1e-5)
  mean_line = next(l for l in out.splitlines() if l.startswith("mean "))
  assert float(mean_line.split()[1]) == pytest.approx(np.mean(psnrs), abs=1e-4)
  assert float(mean_line.split()[2]) == pytest.approx(np.mean(ssims), abs=1e-5)


def test_cli_flags_are_spelled_with_underscores_and_the_old_hyphens_still_work(tmp_path,
                                                                               capsys):
  pred_dir, gt_dir, _ = _folders(tmp_path)
  args = ["--pred", str(pred_dir), "--gt", str(gt_dir)]
  assert metrics.main(args + ["--crop_border", "2", "--y_channel"]) == 0
  new = capsys.readouterr()
  assert "note:" not in new.err
  assert metrics.main(args + ["--crop-border=2", "--y-channel"]) == 0  # test_cli_table too.
  old = capsys.readouterr()
  assert old.out == new.out
  assert "note: --crop-border is now spelled --crop_border" in old.err
  assert "note: --y-channel is now spelled --y_channel" in old.err


def test_cli_unmatched_names(tmp_path, capsys):
  pred_dir, gt_dir, images = _folders(tmp_path)
  _write(pred_dir, "extra_one.png", images["baby"][0])
  (gt_dir / "bird.bmp").rename(gt_dir / "bird_hr.bmp")
  code = metrics.main(["--pred", str(pred_dir), "--gt", str(gt_dir)])
  err = capsys.readouterr().err
  assert code != 0
  assert "only in --pred (2): bird, extra_one" in err
  assert "only in --gt (1): bird_hr" in err


def test_cli_corrupt_file_named(tmp_path, capsys):
  pred_dir, gt_dir, _ = _folders(tmp_path)
  (pred_dir / "bird.tiff").write_bytes(b"this is not a tiff")
  code = metrics.main(["--pred", str(pred_dir), "--gt", str(gt_dir)])
  err = capsys.readouterr().err
  assert code != 0
  assert f"Cannot read image {pred_dir / 'bird.tiff'}" in err and "Traceback" not in err


def test_cli_size_mismatch_named(tmp_path, capsys):
  pred_dir, gt_dir, images = _folders(tmp_path)
  _write(pred_dir, "baby.png", images["baby"][0][:-1])
  assert metrics.main(["--pred", str(pred_dir), "--gt", str(gt_dir)]) != 0
  assert "Size mismatch for 'baby'" in capsys.readouterr().err


def test_cli_module_exit_code(tmp_path):
  """`python -m sr_jax.quality.metrics` on a missing folder: non-zero exit, message, no
  traceback."""
  env = dict(os.environ, PYTHONPATH=str(_REPO), JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-m", "sr_jax.quality.metrics",
                        "--pred", str(tmp_path / "nope"),
                        "--gt", str(tmp_path)], capture_output=True, text=True, cwd=_REPO,
                       env=env, timeout=120, check=False)
  assert res.returncode == 2
  assert "is not a directory" in res.stderr and "Traceback" not in res.stderr


def test_rmse_is_the_root_of_psnr_mse_per_image():
  """RMSE and PSNR share the protocol: per image RMSE = 255 * 10^(-PSNR / 20), RGB and Y."""
  rng = np.random.default_rng(7)
  pred = rng.uniform(0, 1, (3, 20, 24, 3)).astype(np.float32)
  gt = np.clip(pred + rng.normal(0, 0.05, pred.shape), 0, 1).astype(np.float32)
  for y_channel in (False, True):
    r = np.asarray(metrics.rmse(pred, gt, crop_border=2, y_channel=y_channel))
    p = np.asarray(metrics.psnr(pred, gt, crop_border=2, y_channel=y_channel))
    np.testing.assert_allclose(r, 255.0 * 10 ** (-p / 20), rtol=1e-5)
  # Independent: numpy on the rounded RGB images.
  p8, g8 = (np.round(x.astype(np.float64) * 255)[:, 2:-2, 2:-2] for x in (pred, gt))
  np.testing.assert_allclose(np.asarray(metrics.rmse(pred, gt, crop_border=2)),
                             np.sqrt(((p8 - g8) ** 2).mean(axis=(1, 2, 3))), rtol=1e-5)
