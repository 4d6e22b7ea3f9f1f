"""Tests for sr_jax.quality.niqe against BasicSR 1.4.2's `calculate_niqe` and independent checks.

The reference values below were produced outside this project (BasicSR is not a dependency) in
a scratch copy of BasicSR 1.4.2 (PyPI sdist: basicsr/metrics/niqe.py, metric_util.py,
niqe_pris_params.npz, utils/color_util.py, utils/matlab_functions.py; cv2 stubbed, it is only
used for convert_to='gray'), with numpy 2.4.6, scipy 1.17.1, torch 2.13.0+cpu (MKL, AVX-512
Intel Xeon), as

    calculate_niqe(rgb[..., ::-1], crop_border=c, input_order='HWC', convert_to='y')

(BasicSR takes BGR), or `calculate_niqe(gray, 0, input_order='HW')` for 'camera_hw', where
`rgb` is the uint8 skimage photograph of `_image` below. Two variants:

* _STOCK: BasicSR as shipped. Its half-scale imresize runs in float32 through torch/MKL, whose
  summation order depends on the CPU: re-running with MKL_ENABLE_INSTRUCTIONS=AVX2 or SSE4_2 or
  MKL_CBWR=COMPATIBLE moved these values by up to 2.3e-4 relative ('camera'; 'astronaut_blur'
  6.495435 -> 6.494342). So only ~5e-4 agreement is meaningful against stock BasicSR.
* _EXACT_RESIZE: the same code with only `imresize` replaced by BasicSR's own imresize run in
  float64 (its `.float()` / FloatTensor / linspace made double) and the result cast to float32, i.e.
  the correctly rounded resize that sr_jax.quality.niqe uses. These are matched to 1e-6 relative
  (observed: ~1e-14).
"""

import numpy as np
import pytest

from sr_jax.data.sources import load_embedded
from sr_jax.quality import niqe

# name: (skimage photograph, blurred?, crop_border)
_CASES = {
    "astronaut": ("astronaut", False, 0),
    "coffee": ("coffee", False, 0),
    "camera": ("camera", False, 0),  # Grey, repeated to RGB by load_embedded.
    "astronaut_blur": ("astronaut", True, 0),
    "coffee_crop4": ("coffee", False, 4),
}
_STOCK = {
    "astronaut": 3.06460685312984,
    "coffee": 4.115241611108773,
    "camera": 3.155388651626068,
    "astronaut_blur": 6.495435461626015,
    "coffee_crop4": 4.079430190800003,
}
_EXACT_RESIZE = {
    "astronaut": 3.064629030736096,
    "coffee": 4.115245063514212,
    "camera": 3.155894228527765,
    "astronaut_blur": 6.4954286942880755,
    "coffee_crop4": 4.079432086346941,
}
_CAMERA_HW_EXACT_RESIZE = 3.096350459422904  # 2-D uint8 'camera', input_order='HW'.


def _uint8(name: str) -> np.ndarray:
  """The skimage photograph as uint8 HWC RGB (load_embedded gives exactly k / 255)."""
  return np.round(load_embedded(name).astype(np.float64) * 255.0).astype(np.uint8)


def _binomial_blur(image: np.ndarray) -> np.ndarray:
  """Order-8 binomial blur (Gaussian-like, sigma sqrt(2)), edge-replicated, in exact integers.

  Integer arithmetic makes the blurred test image identical on every platform.
  """
  k = np.array([1, 8, 28, 56, 70, 56, 28, 8, 1], np.int64)  # Sums to 256.
  x = np.pad(image.astype(np.int64), ((4, 4), (4, 4), (0, 0)), mode="edge")
  h, w = image.shape[:2]
  rows = sum(k[i] * x[i:i + h] for i in range(9))
  out = sum(k[j] * rows[:, j:j + w] for j in range(9))
  return ((out + 32768) // 65536).astype(np.uint8)


def _image(case: str) -> tuple[np.ndarray, int]:
  """(uint8 RGB image, crop_border) of a reference case."""
  name, blurred, crop = _CASES[case]
  image = _uint8(name)
  return (_binomial_blur(image) if blurred else image), crop


@pytest.fixture(scope="module")
def scores() -> dict[str, float]:
  """sr_jax's NIQE of every reference case, computed once."""
  return {case: niqe.niqe(*_image(case)) for case in _CASES}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_matches_basicsr_with_exact_resize(scores, case):
  assert scores[case] == pytest.approx(_EXACT_RESIZE[case], rel=1e-6)


@pytest.mark.parametrize("case", sorted(_CASES))
def test_matches_stock_basicsr_within_its_cpu_spread(scores, case):
  assert scores[case] == pytest.approx(_STOCK[case], rel=5e-4)


def test_grey_hw_input_matches_basicsr():
  gray = _uint8("camera")[..., 0]
  assert niqe.niqe(gray, input_order="HW") == pytest.approx(_CAMERA_HW_EXACT_RESIZE, rel=1e-6)
  # 2-D input under the default order is grey too (BasicSR's / 255 * 255 round trip).
  assert niqe.niqe(gray) == pytest.approx(_CAMERA_HW_EXACT_RESIZE, rel=1e-6)


def test_blur_scores_worse(scores):
  assert scores["astronaut_blur"] > scores["astronaut"] + 2.0
  coffee = _uint8("coffee")
  assert niqe.niqe(_binomial_blur(coffee)) > scores["coffee"] + 1.0


def test_layouts_and_crop_agree():
  image = _uint8("coffee")[:200, :300]
  base = niqe.niqe(image)
  assert niqe.niqe(image.transpose(2, 0, 1), input_order="CHW") == base
  assert niqe.niqe(image.astype(np.float32)) == base  # Float 0..255 of uint8 values: same.
  assert niqe.niqe(image, crop_border=3) == niqe.niqe(image[3:-3, 3:-3])


def test_too_small_input_errors_clearly():
  rng = np.random.default_rng(0)
  ok = rng.integers(0, 256, (96, 192, 3), dtype=np.uint8)
  assert np.isfinite(niqe.niqe(ok))  # Exactly two blocks is enough.
  with pytest.raises(ValueError, match=r"two 96x96 blocks.*96x191 \(HxW\), i.e. 1x1 blocks"):
    niqe.niqe(ok[:, :191])
  with pytest.raises(ValueError, match=r"crop_border=1 .* 94x190"):
    niqe.niqe(ok, crop_border=1)
  with pytest.raises(ValueError, match="crop_border must be >= 0"):
    niqe.niqe(ok, crop_border=-1)
  with pytest.raises(ValueError, match="channels"):
    niqe.niqe(ok[..., :2])


def test_flat_image_errors_clearly():
  with pytest.raises(ValueError, match="blocks with texture"):
    niqe.niqe(np.full((192, 192, 3), 128, np.uint8))


def test_unit_range_float_input_warns():
  with pytest.warns(UserWarning, match="0..255"):
    niqe.niqe(load_embedded("coffee")[:192, :192])


def test_features_shape_and_scales():
  feats = niqe.niqe_features(_uint8("coffee"))  # 400x600 -> 4x6 blocks.
  assert feats.shape == (24, 36)
  alphas = feats[:, [0, 2, 6, 10, 14, 18, 20, 24, 28, 32]]
  assert np.all((alphas >= 0.2) & (alphas <= 10.0))
  assert np.all(feats[:, [1, 4, 5, 8, 9]] > 0)  # Scales and betas are positive.


def test_window_is_matlab_fspecial_gaussian():
  # fspecial('gaussian', 7, 7/6), written out: exp(-(x^2 + y^2) / (2 sigma^2)), normalised.
  t = np.arange(7) - 3.0
  g = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2.0 * (7.0 / 6.0) ** 2))
  np.testing.assert_allclose(niqe.pristine_model().window, g / g.sum(), rtol=1e-6)


def test_pristine_model_is_a_covariance():
  model = niqe.pristine_model()
  assert model.mean.shape == (36,) and model.cov.shape == (36, 36)
  np.testing.assert_allclose(model.cov, model.cov.T, rtol=1e-12, atol=0)
  assert np.linalg.eigvalsh(model.cov).min() > -1e-9


def test_ratio_table_closed_forms():
  table = niqe._ratio_table()
  grid = niqe._ALPHA_GRID
  assert grid.size == 9801 and grid[0] == 0.2 and grid[-1] == 10.0
  assert table[np.searchsorted(grid, 1.0)] == pytest.approx(0.5)  # Laplace: 1 / 2.
  assert table[np.searchsorted(grid, 2.0)] == pytest.approx(2 / np.pi)  # Gaussian.
  assert np.all(np.diff(table) > 0)


def test_nearest_alpha_equals_exhaustive_argmin():
  table = niqe._ratio_table()
  rng = np.random.default_rng(1)
  ratios = np.concatenate([rng.uniform(-0.1, 0.8, 2000), table[::97],
                           (table[:-1:50] + table[1::50]) / 2, [np.nan]])
  brute = niqe._ALPHA_GRID[np.argmin((table[None, :] - ratios[:, None]) ** 2, axis=1)]
  np.testing.assert_array_equal(niqe._nearest_alpha(ratios), brute)


def test_aggd_fit_recovers_half_normal_scales():
  # An AGGD with alpha 2: half-normal sides with std 1 (left) and 2 (right), each side drawn
  # with probability proportional to its scale (the density is continuous at 0), so that
  # beta = sqrt(Gamma(1/2) / Gamma(3/2)) * std = sqrt(2) * std per side.
  rng = np.random.default_rng(2)
  z = np.abs(rng.standard_normal((3, 200_000)))
  samples = np.where(rng.random(z.shape) < 1 / 3, -1.0 * z, 2.0 * z)
  alpha, beta_l, beta_r = niqe.aggd_fit(samples)
  np.testing.assert_allclose(alpha, 2.0, atol=0.05)
  np.testing.assert_allclose(beta_l, np.sqrt(2.0), rtol=0.01)
  np.testing.assert_allclose(beta_r, 2.0 * np.sqrt(2.0), rtol=0.01)


def test_luma_follows_basicsr_rounding():
  rng = np.random.default_rng(3)
  rgb = rng.integers(0, 256, (64, 64, 3)).astype(np.float64)
  exact = 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0
  np.testing.assert_allclose(niqe.luma(rgb.astype(np.uint8)), exact, rtol=0, atol=3e-5)
  # Exact Y is 185.4999882; BasicSR's float32 casts give 185.5, which rounds (to even) to 186.
  tie = np.array([[[187, 240, 5]]], np.uint8)
  assert float(niqe.luma(tie)[0, 0]) == 185.5
  assert float(np.round(niqe.luma(tie))[0, 0]) == 186.0
