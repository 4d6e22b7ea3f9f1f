"""Tests for sr_jax.data.resize (MATLAB-compatible bicubic imresize).

Three independent checks: Pillow's float-mode bicubic (same Keys a = -0.5 kernel, same
antialiasing and coordinate mapping, but it truncates and renormalises the kernel at the borders
instead of mirroring), a loop-per-pixel transcription of MATLAB's algorithm (borders included),
and values worked out by hand.
"""

import ast
import math
import pathlib

import numpy as np
from PIL import Image
import pytest

from sr_jax.data import resize
from sr_jax.data.resize import imresize, modcrop


def _pil_resize(img: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Pillow bicubic on a float32 (H, W) image (mode 'F', double-precision accumulation)."""
  im = Image.fromarray(img.astype(np.float32), mode="F")
  return np.asarray(im.resize((out_hw[1], out_hw[0]), Image.Resampling.BICUBIC))


def _border(scale: float) -> int:
  """Output pixels near each edge whose kernel reaches outside the image.

  Downscaling: the stretched kernel spans 2 / scale input pixels each side, i.e. 2 output
  pixels. Upscaling: 2 input pixels each side, i.e. 1.5 * scale output pixels plus rounding.
  """
  return 2 if scale < 1 else math.ceil(1.5 * scale) + 1


def _keys(x: float) -> float:
  """Keys' cubic, a = -0.5, written out independently of the module under test."""
  x = abs(x)
  if x <= 1:
    return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
  if x <= 2:
    return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
  return 0.0


def _loop_reference_1d(signal: np.ndarray, scale: float, out_len: int) -> np.ndarray:
  """MATLAB's imresize along one axis, one output pixel at a time (float64)."""
  n = len(signal)
  out = np.zeros(out_len)
  stretch = 1.0 / scale if scale < 1 else 1.0
  for x in range(1, out_len + 1):
    u = x / scale + 0.5 * (1 - 1 / scale)  # 1-based source coordinate.
    total, acc = 0.0, 0.0
    for i in range(math.floor(u - 2 * stretch) - 1, math.ceil(u + 2 * stretch) + 2):
      w = _keys((u - i) / stretch) / stretch
      j = i - 1  # 0-based, then mirrored with the edge repeated.
      while j < 0 or j >= n:
        j = -j - 1 if j < 0 else 2 * n - 1 - j
      total += w
      acc += w * signal[j]
    out[x - 1] = acc / total
  return out


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3])
def test_interior_matches_pillow(scale):
  rng = np.random.default_rng(0)
  img = rng.random((48, 60)).astype(np.float32)
  ours = imresize(img, scale=scale)
  theirs = _pil_resize(img, ours.shape)
  b = _border(scale)
  np.testing.assert_allclose(ours[b:-b, b:-b], theirs[b:-b, b:-b], rtol=0, atol=2e-6)
  # The borders must differ: MATLAB mirrors, Pillow truncates. Equal borders would mean the
  # mirror extension is missing.
  assert np.abs(ours[0] - theirs[0]).max() > 1e-3


def test_color_channels_resized_independently():
  rng = np.random.default_rng(1)
  img = rng.random((36, 40, 3)).astype(np.float32)
  ours = imresize(img, scale=1 / 4)
  assert ours.shape == (9, 10, 3) and ours.dtype == np.float32
  for c in range(3):
    np.testing.assert_allclose(ours[..., c], imresize(img[..., c], scale=1 / 4), atol=1e-7)
    theirs = _pil_resize(img[..., c], (9, 10))
    np.testing.assert_allclose(ours[2:-2, 2:-2, c], theirs[2:-2, 2:-2], atol=2e-6)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 0.3, 2, 1.7])
def test_matches_loop_reference_including_borders(scale):
  rng = np.random.default_rng(2)
  img = rng.random((13, 17))
  ours = imresize(img, scale=scale)
  want_w = np.stack([_loop_reference_1d(row, scale, ours.shape[1]) for row in img])
  want = np.stack([_loop_reference_1d(col, scale, ours.shape[0]) for col in want_w.T], axis=1)
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-12)


def test_tiny_input_mirrors_repeatedly():
  """A 2-pixel axis downscaled by 4: the 16-pixel-wide kernel wraps around the mirror often."""
  img = np.array([[0.25, 1.0]])
  ours = imresize(img, scale=0.25)
  assert ours.shape == (1, 1)
  want = _loop_reference_1d(img[0], 0.25, 1)
  np.testing.assert_allclose(ours[0], want, atol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(scale=1 / 3), dict(scale=2.5),
                                    dict(output_shape=(7, 31))])
def test_constant_image_stays_constant(kwargs):
  img = np.full((20, 24, 2), 0.37)
  out = imresize(img, **kwargs)
  np.testing.assert_allclose(out, 0.37, rtol=0, atol=1e-14)


def test_ramp_downscale_gives_midpoints():
  """Symmetric weights summing to 1 reproduce a linear ramp: output j sits at 2j + 0.5."""
  img = np.tile(np.arange(32, dtype=np.float64), (6, 1))
  out = imresize(img, scale=0.5)
  assert out.shape == (3, 16)
  np.testing.assert_allclose(out[:, 2:-2], np.tile(np.arange(2, 14) * 2 + 0.5, (3, 1)),
                             atol=1e-12)


def test_upscale_impulse_gives_keys_weights():
  """x2: outputs sit 0.25 and 0.75 input pixels from the samples; Keys(0.25) = 0.8671875 etc."""
  img = np.zeros((1, 16))
  img[0, 8] = 1.0
  out = imresize(img, output_shape=(1, 32))
  want = [-0.0234375, -0.0703125, 0.2265625, 0.8671875, 0.8671875, 0.2265625, -0.0703125,
          -0.0234375]
  np.testing.assert_allclose(out[0, 13:21], want, atol=1e-15)
  np.testing.assert_allclose(out[0, :13], 0.0, atol=1e-15)
  np.testing.assert_allclose(out[0, 21:], 0.0, atol=1e-15)


def test_output_shape_rules():
  assert imresize(np.zeros((48, 64)), scale=1 / 3).shape == (16, 22)  # ceil(21.33) = 22.
  assert imresize(np.zeros((25, 31, 3)), scale=0.5).shape == (13, 16, 3)
  assert imresize(np.zeros((30, 30)), scale=0.1).shape == (3, 3)  # Not 4 from float noise.
  assert imresize(np.zeros((10, 12)), scale=2.5).shape == (25, 30)
  assert imresize(np.zeros((10, 12)), output_shape=(7, 40)).shape == (7, 40)


def test_dtypes_and_errors():
  assert imresize(np.zeros((8, 8), np.float32), scale=0.5).dtype == np.float32
  assert imresize(np.zeros((8, 8), np.float64), scale=0.5).dtype == np.float64
  with pytest.raises(TypeError, match="floating-point"):
    imresize(np.zeros((8, 8), np.uint8), scale=0.5)
  with pytest.raises(ValueError, match="exactly one"):
    imresize(np.zeros((8, 8)))
  with pytest.raises(ValueError, match="exactly one"):
    imresize(np.zeros((8, 8)), scale=0.5, output_shape=(4, 4))


def test_modcrop():
  img = np.arange(50 * 37 * 3).reshape(50, 37, 3)
  out = modcrop(img, 12)
  assert out.shape == (48, 36, 3)
  np.testing.assert_array_equal(out, img[:48, :36])
  assert modcrop(img[..., 0], 1).shape == (50, 37)


def test_resize_module_does_not_import_jax():
  """It runs in data-loader worker processes, which must stay free of JAX."""
  tree = ast.parse(pathlib.Path(resize.__file__).read_text())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      imported.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      imported.add((node.module or "").split(".")[0])
  assert imported <= {"math", "numpy"}, imported
