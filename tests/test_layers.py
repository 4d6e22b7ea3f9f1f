"""Tests for sr_jax.models.layers: formulations agree, layouts match PyTorch's conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax.models import layers



def _random(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _init_apply(module, x, seed=0):
  params = module.init(jax.random.PRNGKey(seed), x)['params']
  return params, module.apply({'params': params}, x)


def _both_impls(make, x, seed=0):
  """Applies the 'xla' and 'shifted' variants with the same params."""
  params, y_xla = _init_apply(make('xla'), x, seed)
  y_shifted = make('shifted').apply({'params': params}, x)
  return params, np.asarray(y_xla), np.asarray(y_shifted)


def test_resolve_impl():
  expected = 'shifted' if jax.default_backend() == 'cpu' else 'xla'
  assert layers.resolve_impl('auto') == expected
  assert layers.resolve_impl('xla') == 'xla'
  assert layers.resolve_impl('shifted') == 'shifted'
  with pytest.raises(ValueError, match='impl'):
    layers.resolve_impl('cudnn')


def test_conv1x1_impls_agree_and_layout():
  x = _random((2, 5, 7, 6))
  make = lambda impl: layers.Conv1x1(10, impl=impl)
  params, y_xla, y_shifted = _both_impls(make, x)
  assert params['kernel'].shape == (1, 1, 6, 10)
  assert params['kernel'].dtype == jnp.float32
  assert params['bias'].shape == (10,)
  expected = np.einsum('nhwc,cd->nhwd', x, params['kernel'][0, 0]) + params['bias']
  np.testing.assert_allclose(y_xla, expected, atol=1e-5)
  np.testing.assert_allclose(y_shifted, y_xla, atol=1e-5)


def test_conv1x1_without_bias():
  params, _ = _init_apply(layers.Conv1x1(4, use_bias=False), _random((1, 2, 2, 3)))
  assert set(params) == {'kernel'}


def _numpy_depthwise3x3(x, kernel, bias):
  """Reference: cross-correlation with zero padding 1, one 3x3 filter per channel."""
  n, h, w, c = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros_like(x, dtype=np.float64)
  for i in range(3):
    for j in range(3):
      out += padded[:, i:i + h, j:j + w, :] * kernel[i, j, 0, :]
  return out + bias


def test_depthwise_impls_agree_with_reference():
  x = _random((2, 9, 11, 12))
  make = lambda impl: layers.DepthwiseConv3x3(impl=impl)
  params, y_xla, y_shifted = _both_impls(make, x)
  assert params['kernel'].shape == (3, 3, 1, 12)
  expected = _numpy_depthwise3x3(x, np.asarray(params['kernel']), np.asarray(params['bias']))
  np.testing.assert_allclose(y_xla, expected, atol=1e-5)
  np.testing.assert_allclose(y_shifted, expected, atol=1e-5)


@pytest.mark.parametrize('make', [
    lambda impl: layers.DepthwiseConv3x3(impl=impl),
    lambda impl: layers.Conv1x1(8, impl=impl),
    lambda impl: layers.Conv(8, 2, strides=2, padding=0, impl=impl),
], ids=['depthwise', 'conv1x1', 'down2x2'])
def test_impls_agree_on_gradients(make):
  """The shifted depthwise conv has a hand-written VJP: check it against autodiff of lax."""
  x = jnp.asarray(_random((2, 6, 10, 8)))
  params = make('xla').init(jax.random.PRNGKey(0), x)['params']

  def grads(impl):
    loss = lambda p, x: jnp.sum(jnp.sin(make(impl).apply({'params': p}, x)))
    return jax.grad(loss, argnums=(0, 1))(params, x)

  for g_s, g_x in zip(jax.tree.leaves(grads('shifted')), jax.tree.leaves(grads('xla'))):
    np.testing.assert_allclose(g_s, g_x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('size', [(8, 8), (9, 7)])
@pytest.mark.parametrize('padding', ['VALID', 0])
def test_strided_patch_conv_impls_agree(size, padding):
  """2x2 stride-2 unpadded conv: space-to-depth + matmul equals lax's conv (odd sizes too)."""
  x = _random((2, *size, 5))
  make = lambda impl: layers.Conv(7, 2, strides=2, padding=padding, impl=impl)
  params, y_xla, y_shifted = _both_impls(make, x)
  assert params['kernel'].shape == (2, 2, 5, 7)
  assert y_xla.shape == (2, size[0] // 2, size[1] // 2, 7)
  np.testing.assert_allclose(y_shifted, y_xla, atol=1e-5)


@pytest.mark.parametrize('kwargs', [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, padding='SAME'),
    dict(kernel_size=(3, 1), strides=2, padding='SAME'),
    dict(kernel_size=4, strides=2, padding=1, use_bias=False),
])
def test_dense_conv_impls_agree(kwargs):
  x = _random((1, 8, 10, 4))
  make = lambda impl: layers.Conv(6, impl=impl, **kwargs)
  _, y_xla, y_shifted = _both_impls(make, x)
  np.testing.assert_allclose(y_shifted, y_xla, atol=1e-5)


def test_conv_init_matches_pytorch_bounds():
  """Kernel and bias lie within +-1/sqrt(fan_in), PyTorch's nn.Conv2d default."""
  params, _ = _init_apply(layers.Conv(64, 3, padding=1), _random((1, 4, 4, 16)))
  bound = 1.0 / np.sqrt(3 * 3 * 16)
  for name in ('kernel', 'bias'):
    values = np.abs(np.asarray(params[name]))
    assert values.max() <= bound
    assert values.max() > 0.8 * bound


def _numpy_layernorm2d(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_layernorm2d_matches_reference():
  x = _random((2, 3, 4, 6)) * 3 + 1
  module = layers.LayerNorm2d()
  params = module.init(jax.random.PRNGKey(0), x)['params']
  assert params['scale'].shape == params['bias'].shape == (6,)
  params = {'scale': _random((6,), 1), 'bias': _random((6,), 2)}
  y = module.apply({'params': params}, x)
  expected = _numpy_layernorm2d(x.astype(np.float64), params['scale'], params['bias'])
  np.testing.assert_allclose(y, expected, atol=1e-5)


def test_layernorm2d_bfloat16_uses_float32_statistics():
  """A large common offset (which bf16 statistics would destroy) is removed exactly."""
  base = _random((1, 2, 2, 64))
  x = jnp.asarray(base + 256.0, jnp.bfloat16)
  module = layers.LayerNorm2d(dtype=jnp.bfloat16)
  params = module.init(jax.random.PRNGKey(0), x)['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  y = module.apply({'params': params}, x)
  assert y.dtype == jnp.bfloat16
  x64 = np.asarray(x, np.float64)
  expected = _numpy_layernorm2d(x64, 1.0, 0.0)
  np.testing.assert_allclose(np.asarray(y, np.float32), expected, atol=0.03)


@pytest.mark.parametrize('impl', ['xla', 'shifted'])
def test_bfloat16_compute_keeps_float32_params(impl):
  x = _random((1, 6, 6, 8))
  for module in (layers.Conv1x1(8, impl=impl), layers.DepthwiseConv3x3(impl=impl),
                 layers.Conv(16, 2, strides=2, padding=0, impl=impl)):
    params, y32 = _init_apply(module, x)
    y16 = module.clone(dtype=jnp.bfloat16).apply({'params': params}, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), y32, atol=0.05, rtol=0.02)


def _numpy_pixel_shuffle(x, r):
  """PyTorch's rule, written out: out[n, h*r+i, w*r+j, c] = in[n, h, w, c*r*r + i*r + j]."""
  n, h, w, crr = x.shape
  c = crr // (r * r)
  out = np.zeros((n, h * r, w * r, c), x.dtype)
  for ch in range(c):
    for i in range(r):
      for j in range(r):
        out[:, i::r, j::r, ch] = x[:, :, :, ch * r * r + i * r + j]
  return out


@pytest.mark.parametrize('r', [2, 3])
def test_pixel_shuffle_matches_pytorch_order(r):
  x = _random((2, 3, 4, 5 * r * r))
  y = layers.pixel_shuffle(jnp.asarray(x), r)
  np.testing.assert_array_equal(np.asarray(y), _numpy_pixel_shuffle(x, r))


@pytest.mark.parametrize('r', [2, 4])
def test_pixel_unshuffle_inverts_shuffle(r):
  x = _random((2, 3, 5, 3 * r * r))
  shuffled = layers.pixel_shuffle(jnp.asarray(x), r)
  np.testing.assert_array_equal(np.asarray(layers.pixel_unshuffle(shuffled, r)), x)
  image = _random((1, 2 * r, 3 * r, 2))
  roundtrip = layers.pixel_shuffle(layers.pixel_unshuffle(jnp.asarray(image), r), r)
  np.testing.assert_array_equal(np.asarray(roundtrip), image)


def test_pixel_shuffle_rejects_bad_shapes():
  with pytest.raises(ValueError):
    layers.pixel_shuffle(jnp.zeros((1, 2, 2, 6)), 2)
  with pytest.raises(ValueError):
    layers.pixel_unshuffle(jnp.zeros((1, 5, 4, 1)), 2)
