"""Tests for sr_jax.data.ops (PROD degradation ops and downscaling; numpy and Pillow only).

Ops are checked against independent computations (direct loops, Pillow, closed-form
statistics) or against invariants that a wrong implementation would break.
"""

import ast
import io
import math
import pathlib
import subprocess
import sys
import types

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
import pytest

from sr_jax.config import config_base
from sr_jax.data import degradations, kernels, op_ranges, ops, pipeline, resize
from sr_jax.data.resize import imresize

REPO = pathlib.Path(__file__).resolve().parents[1]
OP_NAMES = ("gaussian_blur", "motion_blur", "gaussian_noise", "poisson_noise", "jpeg", "rain",
            "haze", "low_light")
RANDOM_OPS = ("gaussian_noise", "poisson_noise", "rain", "haze", "low_light")


def textured(shape=(64, 64, 3), seed=0, lo=0.0, hi=1.0) -> np.ndarray:
  """White noise in [lo, hi): maximal high-frequency content."""
  return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def smooth_image(shape=(64, 64, 3), seed=0) -> np.ndarray:
  """A photo-like image: gradients plus mild texture, values inside (0, 1)."""
  h, w, c = shape
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([0.2 + 0.5 * xx, 0.3 + 0.4 * yy, 0.5 - 0.3 * xx * yy][:c], axis=-1)
  return (base + 0.1 * textured(shape, seed)).astype(np.float32)


def laplacian_energy(img: np.ndarray) -> float:
  """Mean squared 4-neighbour Laplacian over the interior: a high-frequency energy measure."""
  lap = (4 * img[1:-1, 1:-1] - img[:-2, 1:-1] - img[2:, 1:-1] - img[1:-1, :-2]
         - img[1:-1, 2:])
  return float(np.mean(lap.astype(np.float64) ** 2))


def direct_correlate(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
  """Reference 2D correlation with numpy 'reflect' borders, one tap at a time (float64)."""
  kh, kw = kernel.shape
  padded = np.pad(img.astype(np.float64), ((kh // 2,) * 2, (kw // 2,) * 2, (0, 0)),
                  mode="reflect")
  h, w = img.shape[:2]
  out = np.zeros(img.shape)
  for a in range(kh):
    for b in range(kw):
      out += kernel[a, b] * padded[a:a + h, b:b + w]
  return out


def kernel_covariance(kernel: np.ndarray) -> np.ndarray:
  """Covariance of a kernel's weights in (x right, y up) pixel coordinates."""
  r = kernel.shape[0] // 2
  offsets = np.arange(-r, r + 1, dtype=np.float64)
  x, y = np.meshgrid(offsets, -offsets)
  k = kernel / kernel.sum()
  mx, my = np.sum(k * x), np.sum(k * y)
  cxx, cyy = np.sum(k * (x - mx) ** 2), np.sum(k * (y - my) ** 2)
  cxy = np.sum(k * (x - mx) * (y - my))
  return np.array([[cxx, cxy], [cxy, cyy]])


# ---------------------------------------------------------------------------------------------
# Contract shared by every op.

def test_ops_registry_names():
  assert tuple(ops.OPS) == OP_NAMES
  for name, op in ops.OPS.items():
    assert op.name == name


def test_apply_op_unknown_name_lists_valid_ops():
  with pytest.raises(ValueError, match="gaussian_blur") as info:
    ops.apply_op("sharpen", textured(), np.random.default_rng(0), {})
  assert "sharpen" in str(info.value) and "low_light" in str(info.value)


@pytest.mark.parametrize("name", OP_NAMES)
def test_op_contract(name):
  """float32, same shape, in [0, 1], new array, read-only input untouched, seed-reproducible."""
  img = smooth_image((48, 40, 3))
  img.setflags(write=False)
  original = img.copy()
  params = ops.OPS[name].draw(np.random.default_rng(3), op_ranges.OpRanges())
  out = ops.apply_op(name, img, np.random.default_rng(7), params)
  again = ops.apply_op(name, img, np.random.default_rng(7), params)
  assert out.dtype == np.float32 and out.shape == img.shape
  assert np.all(out >= 0.0) and np.all(out <= 1.0)
  assert not np.shares_memory(out, img)
  np.testing.assert_array_equal(img, original)
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out, img), "the op did nothing"
  if name in RANDOM_OPS:
    other = ops.apply_op(name, img, np.random.default_rng(8), params)
    assert not np.array_equal(out, other), "the op ignores its rng"


def test_draws_lie_inside_ranges():
  ranges = op_ranges.OpRanges(blur_anisotropic_prob=0.5, noise_gray_prob=0.5)
  rng = np.random.default_rng(0)
  fields = {  # (op, param) -> range it must lie in.
      ("gaussian_blur", "sigma_x"): ranges.blur_sigma,
      ("gaussian_blur", "sigma_y"): ranges.blur_sigma,
      ("gaussian_blur", "theta"): (0.0, 180.0),
      ("motion_blur", "length"): ranges.motion_length,
      ("motion_blur", "angle"): ranges.motion_angle,
      ("gaussian_noise", "sigma"): ranges.noise_sigma,
      ("poisson_noise", "peak"): ranges.poisson_peak,
      ("jpeg", "quality"): ranges.jpeg_quality,
      ("rain", "density"): ranges.rain_density,
      ("rain", "length"): ranges.rain_length,
      ("rain", "angle"): ranges.rain_angle,
      ("rain", "intensity"): ranges.rain_intensity,
      ("haze", "beta"): ranges.haze_beta,
      ("haze", "airlight"): ranges.haze_airlight,
      ("low_light", "exposure"): ranges.lowlight_exposure,
      ("low_light", "gamma"): ranges.lowlight_gamma,
      ("low_light", "noise"): ranges.lowlight_noise,
  }
  for name, op in ops.OPS.items():
    for _ in range(100):
      params = op.draw(rng, ranges)
      assert all(type(v) in (float, int, bool) for v in params.values()), params
      for key, value in params.items():
        if (name, key) in fields:
          lo, hi = fields[(name, key)]
          assert lo <= value <= hi, (name, key, value)
      if "kernel_size" in params:
        assert params["kernel_size"] == ranges.blur_kernel_size


def test_blur_draw_isotropic_and_anisotropic():
  rng = np.random.default_rng(1)
  iso = [ops.OPS["gaussian_blur"].draw(rng, op_ranges.OpRanges()) for _ in range(50)]
  assert all(p["sigma_x"] == p["sigma_y"] and p["theta"] == 0.0 for p in iso)
  mixed = [ops.OPS["gaussian_blur"].draw(rng, op_ranges.OpRanges(blur_anisotropic_prob=0.5))
           for _ in range(400)]
  aniso = np.mean([p["sigma_x"] != p["sigma_y"] for p in mixed])
  assert 0.4 < aniso < 0.6


def test_gray_noise_draw_probability():
  rng = np.random.default_rng(2)
  draws = [ops.OPS["gaussian_noise"].draw(rng, op_ranges.OpRanges(noise_gray_prob=0.3))["gray"]
           for _ in range(1000)]
  assert 0.25 < np.mean(draws) < 0.35
  never = [ops.OPS["gaussian_noise"].draw(rng, op_ranges.OpRanges())["gray"] for _ in range(100)]
  assert not any(never)


def test_poisson_peak_is_log_uniform():
  rng = np.random.default_rng(0)
  ranges = op_ranges.OpRanges(poisson_peak=(10.0, 10000.0))
  peaks = np.array([ops.OPS["poisson_noise"].draw(rng, ranges)["peak"] for _ in range(4000)])
  # Log-uniform: median = geometric mean (316); a uniform draw would have a median of ~5000.
  assert np.median(peaks) == pytest.approx(math.sqrt(10.0 * 10000.0), rel=0.1)
  counts, _ = np.histogram(np.log10(peaks), bins=3, range=(1, 4))
  assert np.all(np.abs(counts - 4000 / 3) < 150), counts


def test_jpeg_quality_draw_is_inclusive():
  rng = np.random.default_rng(0)
  qualities = {ops.OPS["jpeg"].draw(rng, op_ranges.OpRanges(jpeg_quality=(50, 52)))["quality"]
               for _ in range(200)}
  assert qualities == {50, 51, 52}


# ---------------------------------------------------------------------------------------------
# Blur.

def test_gaussian_helpers_match_reference():
  """The helpers degradations.py shares: truncated normalised Gaussian, reflect borders."""
  x = np.arange(-6, 7, dtype=np.float64)
  k1 = np.exp(-x ** 2 / (2 * 2.0 ** 2))
  np.testing.assert_allclose(kernels.gaussian_kernel1d(2.0, 13), k1 / k1.sum(), rtol=1e-6)
  img = smooth_image((30, 26, 3))
  k = kernels.gaussian_kernel1d(1.3, 9).astype(np.float64)
  np.testing.assert_allclose(kernels.gaussian_blur(img, 1.3, 9),
                             direct_correlate(img, np.outer(k, k)), atol=1e-6)
  unchanged = kernels.gaussian_blur(img, 0.0, 9)
  np.testing.assert_array_equal(unchanged, img)
  assert not np.shares_memory(unchanged, img)
  noise = np.random.default_rng(5).standard_normal(img.shape, dtype=np.float32)
  np.testing.assert_array_equal(
      kernels.add_gaussian_noise(img, 12.0, np.random.default_rng(5)),
      np.clip(img + noise * np.float32(12.0 / 255.0), 0.0, 1.0))


def test_isotropic_path_is_separable_gaussian_blur():
  img = textured()
  out = ops.apply_op("gaussian_blur", img, np.random.default_rng(0),
                     dict(sigma_x=1.7, sigma_y=1.7, theta=0.0, kernel_size=21))
  separable = kernels.gaussian_blur(img, 1.7, 21)
  np.testing.assert_array_equal(out, np.clip(separable, 0.0, 1.0))
  np.testing.assert_allclose(out, separable, atol=1e-6)


@pytest.mark.parametrize("name,params", [
    ("gaussian_blur", dict(sigma_x=1.5, sigma_y=1.5, theta=0.0, kernel_size=21)),
    ("gaussian_blur", dict(sigma_x=3.0, sigma_y=0.8, theta=35.0, kernel_size=21)),
    ("motion_blur", dict(length=9.0, angle=60.0, kernel_size=21)),
])
def test_blur_removes_high_frequencies_and_keeps_constants(name, params):
  rng = np.random.default_rng(0)
  img = textured()
  blurred = ops.apply_op(name, img, rng, params)
  assert laplacian_energy(blurred) < 0.3 * laplacian_energy(img)
  assert blurred.mean() == pytest.approx(img.mean(), abs=5e-3)
  flat = np.full((40, 50, 3), 0.37, np.float32)
  np.testing.assert_allclose(ops.apply_op(name, flat, rng, params), flat, atol=1e-5)


def test_anisotropic_kernel_moments():
  sx, sy, theta = 3.0, 1.2, 30.0
  kernel = kernels.anisotropic_gaussian_kernel(sx, sy, theta, 31)
  assert kernel.sum() == pytest.approx(1.0)
  cov = kernel_covariance(kernel)
  c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
  u, v = np.array([c, s]), np.array([-s, c])  # Rotated axes in (x right, y up).
  assert u @ cov @ u == pytest.approx(sx ** 2, rel=0.02)
  assert v @ cov @ v == pytest.approx(sy ** 2, rel=0.02)
  assert u @ cov @ v == pytest.approx(0.0, abs=0.02)
  # Equal sigmas: the outer product of the 1D kernel.
  iso = kernels.anisotropic_gaussian_kernel(1.5, 1.5, 70.0, 11)
  k1 = kernels.gaussian_kernel1d(1.5, 11).astype(np.float64)
  np.testing.assert_allclose(iso, np.outer(k1, k1), atol=1e-7)


def test_anisotropic_blur_matches_direct_correlation():
  img = textured((20, 17, 3), seed=4)
  params = dict(sigma_x=2.0, sigma_y=0.7, theta=40.0, kernel_size=7)
  out = ops.apply_op("gaussian_blur", img, np.random.default_rng(0), params)
  kernel = kernels.anisotropic_gaussian_kernel(2.0, 0.7, 40.0, 7)
  np.testing.assert_allclose(out, direct_correlate(img, kernel), atol=1e-5)


def test_correlate2d_orientation_with_asymmetric_kernel():
  """A lopsided kernel catches a flipped (convolution instead of correlation) implementation."""
  img = textured((19, 23, 2), seed=6)
  kernel = np.random.default_rng(1).random((3, 5))
  np.testing.assert_allclose(kernels.correlate2d(img, kernel), direct_correlate(img, kernel),
                             atol=1e-5)


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0, 170.0])
def test_motion_kernel_normalised_and_along_angle(angle):
  length = 15.0
  kernel = kernels.motion_kernel(length, angle, 21)
  assert kernel.sum() == pytest.approx(1.0)
  assert np.all(kernel >= 0)
  eigvals, eigvecs = np.linalg.eigh(kernel_covariance(kernel))
  major = eigvecs[:, 1]
  found = math.degrees(math.atan2(major[1], major[0])) % 180.0
  assert min(abs(found - angle), 180.0 - abs(found - angle)) < 1.5
  assert eigvals[1] == pytest.approx((length - 1) ** 2 / 12, rel=0.1)  # Uniform streak.
  assert eigvals[0] < 0.35  # About one pixel wide.


def test_motion_kernel_horizontal_covers_length_pixels():
  kernel = kernels.motion_kernel(5.0, 0.0, 7)
  np.testing.assert_allclose(kernel[[0, 1, 2, 4, 5, 6]], 0.0)
  row = kernel[3]
  assert row[0] == 0 and row[6] == 0 and np.all(row[1:6] > 0)
  np.testing.assert_allclose(row[2:5], row[2], rtol=1e-9)
  np.testing.assert_array_equal(kernels.motion_kernel(1.0, 45.0, 5)[2, 2], 1.0)


def test_motion_length_longer_than_kernel_is_an_error():
  with pytest.raises(ValueError, match="21"):
    kernels.motion_kernel(25.0, 0.0, 21)


# ---------------------------------------------------------------------------------------------
# JPEG.

def _pillow_round_trip(img: np.ndarray, quality: int) -> np.ndarray:
  pixels = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
  buffer.seek(0)
  return np.asarray(Image.open(buffer).convert("RGB")).astype(np.float32) / 255


@pytest.mark.parametrize("quality", [10, 55, 95])
def test_jpeg_matches_pillow_round_trip(quality):
  img = smooth_image((40, 56, 3))
  out = ops.apply_op("jpeg", img, np.random.default_rng(0), dict(quality=quality))
  np.testing.assert_array_equal(out, _pillow_round_trip(img, quality))
  again = ops.apply_op("jpeg", img, np.random.default_rng(1), dict(quality=quality))
  np.testing.assert_array_equal(out, again)


def test_jpeg_lower_quality_larger_error():
  img = smooth_image((64, 64, 3))
  errors = [np.mean((ops.apply_op("jpeg", img, None, dict(quality=q)) - img) ** 2)
            for q in (15, 50, 95)]
  assert errors[0] > errors[1] > errors[2] > 0


# ---------------------------------------------------------------------------------------------
# Noise.

def test_gaussian_noise_std_and_gray():
  flat = np.full((128, 128, 3), 0.5, np.float32)
  out = ops.apply_op("gaussian_noise", flat, np.random.default_rng(0),
                     dict(sigma=20.0, gray=False))
  assert np.std(out - flat) == pytest.approx(20.0 / 255.0, rel=0.03)
  assert not np.array_equal(out[..., 0], out[..., 1])
  gray = ops.apply_op("gaussian_noise", flat, np.random.default_rng(0),
                      dict(sigma=20.0, gray=True))
  assert np.std(gray - flat) == pytest.approx(20.0 / 255.0, rel=0.03)
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("level", [0.2, 0.6])
def test_poisson_variance_is_mean_over_peak(level):
  peak = 100.0
  flat = np.full((128, 128, 3), level, np.float32)
  out = ops.apply_op("poisson_noise", flat, np.random.default_rng(1), dict(peak=peak))
  assert out.mean() == pytest.approx(level, rel=0.01)
  assert out.var() == pytest.approx(level / peak, rel=0.03)
  # Counts are integers: every output is a multiple of 1 / peak.
  np.testing.assert_allclose(out * peak, np.round(out * peak), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Weather and exposure.

def dark_channel(img: np.ndarray, patch: int = 15) -> np.ndarray:
  """He et al.'s dark channel: min over channels, then over a patch x patch window."""
  return sliding_window_view(img.min(axis=2), (patch, patch)).min(axis=(2, 3))


def test_haze_raises_dark_channel():
  img = textured((64, 64, 3), seed=2, hi=0.6)
  out = ops.apply_op("haze", img, np.random.default_rng(0), dict(beta=1.5, airlight=0.8))
  before, after = dark_channel(img), dark_channel(out)
  assert np.all(after >= before - 1e-6)
  assert after.mean() > before.mean() + 0.1


def test_haze_approaches_airlight_where_transmission_is_small():
  airlight = 0.85
  img = textured((48, 48, 3), seed=3)
  dense = ops.apply_op("haze", img, np.random.default_rng(0), dict(beta=12.0, airlight=airlight))
  # The top row has depth >= 0.7, so t <= exp(-8.4).
  np.testing.assert_allclose(dense[0], airlight, atol=1e-3)
  # On a black image out = A (1 - t): recover t, which must lie in [0, 1], grow towards the
  # (near) bottom and stay a smooth map.
  black = np.zeros((64, 64, 3), np.float32)
  out = ops.apply_op("haze", black, np.random.default_rng(1), dict(beta=2.0, airlight=airlight))
  t = 1.0 - out[..., 0] / airlight
  assert np.all(t >= -1e-6) and np.all(t <= 1 + 1e-6)
  assert t[-8:].mean() > t[:8].mean() + 0.3
  assert np.abs(np.diff(t, axis=1)).max() < 0.05


def test_haze_is_a_property_of_the_scene_not_of_the_crop_size():
  """A 64-pixel training crop and a 160-pixel evaluation crop of one 320-pixel photograph see
  the same haze where they overlap (same draw), and a crop's depth range shrinks with its share
  of the scene, where a per-crop depth map spanned far-to-near in every crop."""
  photo = textured((320, 320, 3), seed=4)
  params = dict(beta=2.0, airlight=0.9)

  def hazy(top: int, left: int, size: int) -> np.ndarray:
    crop = photo[top:top + size, left:left + size]
    return ops.apply_op("haze", crop, np.random.default_rng(3), params,
                        ops.Window(top, left, 320, 320))

  small, large = hazy(100, 120, 64), hazy(80, 80, 160)
  np.testing.assert_allclose(small, large[20:84, 40:104], atol=1e-6)
  depth_small = ops.haze_depth((64, 64), np.random.default_rng(3), ops.Window(100, 120, 320, 320))
  depth_whole = ops.haze_depth((64, 64), np.random.default_rng(3))
  assert np.ptp(depth_small[:, 0]) < 0.4 * np.ptp(depth_whole[:, 0])
  # The whole photograph as its own window is the default (no window).
  np.testing.assert_array_equal(
      ops.haze_depth((50, 40), np.random.default_rng(1), ops.Window(0, 0, 50, 40)),
      ops.haze_depth((50, 40), np.random.default_rng(1)))


def test_training_crops_and_evaluation_images_carry_their_scene_window():
  """The pipeline places crops in their photograph: a haze-only training pair equals the
  haze of the whole photograph cut at the crop's corner."""
  photo = textured((96, 96, 3), seed=5)
  spec = degradations.DegradationSpec(kind="fixed", ops=("haze",), min_ops=1, max_ops=1)
  crop = pipeline.RandomCropPair(32, spec, augment=False)
  out = crop.random_map({"image": photo}, np.random.default_rng(9))
  rng = np.random.default_rng(9)
  top, left = pipeline.random_corner(96, 96, 32, rng)
  chain = degradations.plan_chain(rng, spec)
  whole = degradations.apply_chain(photo, chain, rng)
  np.testing.assert_allclose(out["lq"], whole[top:top + 32, left:left + 32], atol=1e-6)


def test_low_light_formula_and_darkening():
  img = smooth_image()
  exact = ops.apply_op("low_light", img, np.random.default_rng(0),
                       dict(exposure=0.3, gamma=1.5, noise=0.0))
  np.testing.assert_allclose(exact, 0.3 * img.astype(np.float64) ** 1.5, atol=1e-6)
  noisy = ops.apply_op("low_light", img, np.random.default_rng(0),
                       dict(exposure=0.3, gamma=1.5, noise=8.0))
  assert noisy.mean() < 0.5 * img.mean()
  flat = np.full((128, 128, 3), 0.8, np.float32)
  out = ops.apply_op("low_light", flat, np.random.default_rng(0),
                     dict(exposure=0.3, gamma=1.5, noise=10.0))
  assert out.mean() == pytest.approx(0.3 * 0.8 ** 1.5, abs=2e-3)
  assert out.std() == pytest.approx(10.0 / 255.0, rel=0.03)


def test_rain_only_brightens():
  img = smooth_image()
  out = ops.apply_op("rain", img, np.random.default_rng(0),
                     dict(density=0.01, length=20.0, angle=10.0, intensity=0.8))
  assert np.all(out >= img)
  assert np.any(out > img)
  nothing = ops.apply_op("rain", img, np.random.default_rng(0),
                         dict(density=0.0, length=20.0, angle=10.0, intensity=0.8))
  np.testing.assert_array_equal(nothing, img)


def test_rain_changed_fraction_matches_density():
  """A pixel stays dry iff none of the `footprint` seed sites that reach it got a seed."""
  density, length, angle = 0.004, 15.0, 10.0
  footprint = np.count_nonzero(kernels.rain_streak_kernel(length, angle))
  assert length - 2 <= footprint <= 3 * length  # An anti-aliased line about one pixel wide.
  img = np.full((256, 256, 3), 0.3, np.float32)
  fractions = []
  for seed in range(4):
    out = ops.apply_op("rain", img, np.random.default_rng(seed),
                       dict(density=density, length=length, angle=angle, intensity=0.6))
    fractions.append(np.mean(out[..., 0] > img[..., 0]))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # Grey rain.
  expected = 1 - (1 - density) ** footprint
  assert np.mean(fractions) == pytest.approx(expected, rel=0.1)
  sparse = ops.apply_op("rain", img, np.random.default_rng(0),
                        dict(density=density / 4, length=length, angle=angle, intensity=0.6))
  assert np.mean(sparse[..., 0] > 0.3) < 0.5 * np.mean(fractions)


def test_rain_streak_peak_is_intensity_and_points_along_angle():
  kernel = kernels.rain_streak_kernel(21.0, 20.0)
  assert kernel.max() == pytest.approx(1.0)
  _, eigvecs = np.linalg.eigh(kernel_covariance(kernel))
  major = eigvecs[:, 1]
  # 20 degrees from vertical, bottom leaning right: direction (sin 20, -cos 20) in (x, y up).
  found = math.degrees(math.atan2(abs(major[0]), abs(major[1])))
  assert found == pytest.approx(20.0, abs=1.5)
  assert major[0] * major[1] < 0
  # On black, screen blending leaves the rain layer itself: isolated streak peaks = intensity.
  black = np.zeros((64, 64, 3), np.float32)
  out = ops.apply_rain(black, np.random.default_rng(0), density=0.002, length=9.0, angle=0.0,
                       intensity=0.5)
  assert np.any(np.abs(out - 0.5) < 1e-6)
  white = np.ones((16, 16, 3), np.float32)
  np.testing.assert_array_equal(
      ops.apply_rain(white, np.random.default_rng(0), density=0.01, length=9.0, angle=0.0,
                     intensity=0.5), white)


# ---------------------------------------------------------------------------------------------
# Downscaling.

@pytest.mark.parametrize("method", resize.RESIZE_METHODS)
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_downscale_shape_and_constant(method, scale):
  img = textured((24, 36, 3))
  out = resize.downscale(img, scale, method)
  assert out.shape == (24 // scale, 36 // scale, 3) and out.dtype == np.float32
  flat = np.full((24, 36, 3), 0.42, np.float32)
  np.testing.assert_allclose(resize.downscale(flat, scale, method), 0.42, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3])
def test_area_is_block_mean(scale):
  img = textured((12, 18, 3))
  out = resize.downscale(img, scale, "area")
  for i in range(12 // scale):
    for j in range(18 // scale):
      block = img[i * scale:(i + 1) * scale, j * scale:(j + 1) * scale]
      np.testing.assert_allclose(out[i, j], block.mean(axis=(0, 1)), atol=1e-7)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_nearest_picks_documented_pixels(scale):
  img = textured((24, 36))
  out = resize.downscale(img, scale, "nearest")
  for i in range(24 // scale):
    for j in range(36 // scale):
      assert out[i, j] == img[math.floor((i + 0.5) * scale), math.floor((j + 0.5) * scale)]
  # Pillow maps output centres the same way, (i + 0.5) * scale, and floors.
  pil = Image.fromarray(img, mode="F").resize((36 // scale, 24 // scale),
                                              Image.Resampling.NEAREST)
  np.testing.assert_array_equal(out, np.asarray(pil))


def test_bilinear_hand_weights():
  """MATLAB's antialiased bilinear x1/2 weighs four pixels 1:3:3:1, x1/3 five pixels 1:2:3:2:1."""
  impulse = np.zeros((12, 12), np.float32)
  impulse[5, 5] = 1.0
  half = resize.downscale(impulse, 2, "bilinear")  # Output i covers inputs 2i - 1 .. 2i + 2.
  np.testing.assert_allclose(half[2, 2], (3 / 8) ** 2, atol=1e-7)
  np.testing.assert_allclose(half[2, 3], 3 / 8 * 1 / 8, atol=1e-7)
  np.testing.assert_allclose(half[3, 3], (1 / 8) ** 2, atol=1e-7)
  np.testing.assert_allclose(half[1, 2], 0.0, atol=1e-7)
  # x1/3: output i is centred on input 3i + 1; the impulse at 5 is 1 and 2 pixels from
  # the centres of outputs 1 and 2.
  third = resize.downscale(impulse, 3, "bilinear")
  np.testing.assert_allclose(third[1, 1], (2 / 9) ** 2, atol=1e-7)
  np.testing.assert_allclose(third[2, 1], 1 / 9 * 2 / 9, atol=1e-7)
  centred = np.zeros((12, 12), np.float32)
  centred[4, 7] = 1.0  # The centre of output (1, 2): no other output reaches it.
  third = resize.downscale(centred, 3, "bilinear")
  np.testing.assert_allclose(third[1, 2], (3 / 9) ** 2, atol=1e-7)
  assert np.count_nonzero(third) == 1


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bilinear_interior_matches_pillow(scale):
  """Pillow's reducing bilinear is the same stretched triangle; it differs only at borders."""
  img = textured((48, 60))
  out = resize.downscale(img, scale, "bilinear")
  pil = np.asarray(Image.fromarray(img, mode="F").resize((60 // scale, 48 // scale),
                                                         Image.Resampling.BILINEAR))
  np.testing.assert_allclose(out[2:-2, 2:-2], pil[2:-2, 2:-2], atol=1e-6)


def test_bicubic_is_imresize():
  img = textured((24, 36, 3))
  np.testing.assert_array_equal(resize.downscale(img, 4, "bicubic"),
                                np.clip(imresize(img, scale=0.25), 0.0, 1.0))


def test_downscale_errors():
  with pytest.raises(ValueError, match=r"\(25, 36, 3\)"):
    resize.downscale(np.zeros((25, 36, 3), np.float32), 2, "area")
  with pytest.raises(ValueError, match="bicubic"):
    resize.downscale(np.zeros((24, 36, 3), np.float32), 2, "lanczos")


# ---------------------------------------------------------------------------------------------
# Configuration.

@pytest.mark.parametrize("field,value", [
    ("blur_sigma", (-1.0, 1.0)),
    ("blur_sigma", (2.0, 1.0)),
    ("blur_kernel_size", 20),
    ("blur_kernel_size", -1),
    ("blur_anisotropic_prob", 1.5),
    ("noise_gray_prob", -0.1),
    ("motion_length", (-1.0, 3.0)),
    ("noise_sigma", (1.0,)),
    ("poisson_peak", (0.0, 10.0)),
    ("jpeg_quality", (0, 50)),
    ("jpeg_quality", (50, 101)),
    ("jpeg_quality", (30.5, 50)),
    ("rain_density", (0.1, 1.5)),
    ("rain_angle", (-100.0, 0.0)),
    ("haze_airlight", (0.5, 1.2)),
    ("lowlight_gamma", (0.0, 1.0)),
    ("lowlight_exposure", (0.5, 2.0)),
])
def test_invalid_ranges_name_the_config_key(field, value):
  with pytest.raises(ValueError, match=rf"degradation\.{field} must"):
    op_ranges.OpRanges(**{field: value})


def test_ranges_from_config():
  cfg = config_base.degradation_config()
  ranges = op_ranges.ranges_from_config(cfg)
  assert ranges.blur_kernel_size == cfg.blur_kernel_size
  assert ranges.motion_length == tuple(float(v) for v in cfg.motion_length)
  assert ranges.jpeg_quality == tuple(cfg.jpeg_quality)
  assert all(type(v) is int for v in ranges.jpeg_quality)
  assert all(type(v) is float for v in ranges.noise_sigma)
  partial = op_ranges.ranges_from_config(types.SimpleNamespace(noise_sigma=[2, 4], kind="noise"))
  assert partial.noise_sigma == (2.0, 4.0)
  assert partial.haze_beta == op_ranges.OpRanges().haze_beta
  with pytest.raises(ValueError, match=r"degradation\.jpeg_quality"):
    op_ranges.ranges_from_config(types.SimpleNamespace(jpeg_quality=(30.5, 90)))
  # Motion streaks longer than the kernel only matter when motion blur can be drawn.
  long_motion = op_ranges.ranges_from_config(types.SimpleNamespace(blur_kernel_size=11,
                                                             motion_length=(3, 15)))
  with pytest.raises(ValueError, match=r"degradation\.motion_length.*blur_kernel_size \(11\)"):
    long_motion.check_motion_fits()


def test_ops_module_does_not_import_jax():
  """Workers are spawned and must stay numpy/Pillow-only."""
  code = ("import sys; import sr_jax.data.ops; "
          "bad = [m for m in ('jax', 'flax', 'scipy', 'cv2', 'torch') if m in sys.modules]; "
          "assert not bad, bad")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
  tree = ast.parse((REPO / "sr_jax" / "data" / "ops.py").read_text())
  imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
              for alias in node.names}
  imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
  allowed = {"__future__", "dataclasses", "io", "math", "typing", "numpy", "PIL",
             "sr_jax"}
  assert {m.split(".")[0] for m in imported} <= allowed, imported
