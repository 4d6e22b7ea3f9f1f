"""Tests for sr_jax.models.restormer: parameter counts, building blocks against float64 NumPy,
padding, formulations, mixed precision, errors, and its registry entry.

The whole network is compared with a PyTorch forward of the same weights in test_convert.py;
here each block is checked against an independent NumPy transcription of the official
equations, so a failure points at the block.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.special import erf

from sr_jax.adapt import lora
from sr_jax.models import registry, restormer
from sr_jax.util import trees


def _count(model, channels=3):
  x = jax.ShapeDtypeStruct((1, 16, 16, channels), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def test_official_parameter_count():
  # The paper's and the official repository's count for the default configuration.
  assert _count(registry.build_preset('restormer', 'default')) == 26_126_644
  # BiasFree drops one bias vector per LayerNorm: 2 norms x sum(blocks x channels).
  dims = [48] * 4 + [96] * 6 + [192] * 6 + [384] * 8 + [192] * 6 + [96] * 6 + [96] * 4 + [96] * 4
  assert _count(registry.build_preset('restormer', 'real_denoising')) == 26_126_644 - 2 * sum(dims)


# ----------------------------------------------------------------------------------------------
# Blocks against float64 NumPy (NHWC, flax kernel layouts).


def _np_conv1x1(x, kernel):
  return np.einsum('nhwc,cd->nhwd', x, kernel[0, 0])


def _np_depthwise(x, kernel):
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  return sum(padded[:, i:i + h, j:j + w, :] * kernel[i, j, 0] for i in range(3) for j in range(3))


def _np_attention(x, p, heads):
  """The official MDTA, written per head with explicit loops over heads."""
  n, h, w, c = x.shape
  qkv = _np_depthwise(_np_conv1x1(x, p['qkv']['kernel']), p['qkv_dwconv']['kernel'])
  q, k, v = np.split(qkv.reshape(n, h * w, 3 * c), 3, axis=-1)
  d = c // heads
  out = np.zeros((n, h * w, c))
  for b in range(n):
    for head in range(heads):
      sl = slice(head * d, (head + 1) * d)
      qh, kh, vh = q[b, :, sl].T, k[b, :, sl].T, v[b, :, sl].T  # (d, pixels)
      qh = qh / np.maximum(np.linalg.norm(qh, axis=1, keepdims=True), 1e-12)
      kh = kh / np.maximum(np.linalg.norm(kh, axis=1, keepdims=True), 1e-12)
      logits = qh @ kh.T * p['temperature'][head]
      attn = np.exp(logits - logits.max(axis=1, keepdims=True))
      attn /= attn.sum(axis=1, keepdims=True)
      out[b, :, sl] = (attn @ vh).T
  return _np_conv1x1(out.reshape(n, h, w, c), p['project_out']['kernel'])


def _np_ffn(x, p):
  y = _np_depthwise(_np_conv1x1(x, p['project_in']['kernel']), p['dwconv']['kernel'])
  x1, x2 = np.split(y, 2, axis=-1)
  gelu = 0.5 * x1 * (1 + erf(x1 / np.sqrt(2)))
  return _np_conv1x1(gelu * x2, p['project_out']['kernel'])


def _np_layernorm(x, p, bias_free):
  var = x.var(axis=-1, keepdims=True)
  if bias_free:
    return x / np.sqrt(var + 1e-5) * p['scale']
  return (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(var + 1e-5) * p['scale'] + p['bias']


def _randomised(module, x, seed=0):
  """Params of `module` with every leaf random (norm scales and temperatures away from 1)."""
  params = jax.jit(module.init)(jax.random.PRNGKey(seed), x)['params']
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  leaves = [np.asarray(leaf + 0.3 * jax.random.normal(k, leaf.shape), np.float64)
            for leaf, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, leaves)


@pytest.fixture(scope='module')
def features():
  return np.random.default_rng(0).normal(size=(2, 8, 12, 16)).astype(np.float32)


@pytest.mark.parametrize('heads', [1, 4])
def test_attention_matches_numpy(features, heads):
  module = restormer.Attention(heads, impl='xla')
  p = _randomised(module, features)
  got = module.apply({'params': jax.tree.map(jnp.float32, p)}, features)
  np.testing.assert_allclose(got, _np_attention(features.astype(np.float64), p, heads),
                             atol=2e-5, rtol=1e-4)


def test_feed_forward_matches_numpy(features):
  module = restormer.FeedForward(2.66)
  p = _randomised(module, features)
  assert p['project_in']['kernel'].shape == (1, 1, 16, 2 * int(16 * 2.66))
  got = module.apply({'params': jax.tree.map(jnp.float32, p)}, features)
  np.testing.assert_allclose(got, _np_ffn(features.astype(np.float64), p), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize('layernorm_type', ['WithBias', 'BiasFree'])
def test_transformer_block_matches_numpy(features, layernorm_type):
  module = restormer.TransformerBlock(2, 2.66, layernorm_type=layernorm_type)
  p = _randomised(module, features)
  bias_free = layernorm_type == 'BiasFree'
  assert ('bias' in p['norm1']) != bias_free
  x = features.astype(np.float64) + 1.5  # An offset the BiasFree numerator must keep.
  y = x + _np_attention(_np_layernorm(x, p['norm1'], bias_free), p['attn'], 2)
  y = y + _np_ffn(_np_layernorm(y, p['norm2'], bias_free), p['ffn'])
  got = module.apply({'params': jax.tree.map(jnp.float32, p)}, x.astype(np.float32))
  np.testing.assert_allclose(got, y, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# The network.


@pytest.fixture(scope='module')
def micro():
  model = registry.build_preset('restormer', 'micro')
  x = np.random.default_rng(1).random((1, 24, 32, 3), np.float32)
  return model, _randomised(model, x), x


def test_odd_sizes_are_reflect_padded_to_eight(micro):
  model, params, x = micro
  params = jax.tree.map(jnp.float32, params)
  odd = x[:, :19, :27]
  got = model.apply({'params': params}, odd)
  assert got.shape == odd.shape
  padded = np.pad(odd, ((0, 0), (0, 5), (0, 5), (0, 0)), mode='reflect')
  want = model.apply({'params': params}, padded)[:, :19, :27]
  np.testing.assert_allclose(got, want, atol=1e-6)
  with pytest.raises(ValueError, match='too small'):
    model.apply({'params': params}, x[:, :4, :4])


def test_formulations_agree_on_outputs_and_gradients(features):
  # Only the blocks' 1x1 and depthwise convs have a CPU formulation ('shifted'); Restormer's
  # 3x3 convs are XLA's in both, so one transformer block covers every difference.
  module = restormer.TransformerBlock(2, 2.66, bias=True)
  params = jax.tree.map(jnp.float32, _randomised(module, features))

  def loss(p, impl):
    y = module.clone(impl=impl).apply({'params': p}, features)
    return jnp.mean(jnp.square(y - 0.5))

  (l_xla, g_xla), (l_sh, g_sh) = (jax.value_and_grad(loss)(params, impl)
                                  for impl in ('xla', 'shifted'))
  np.testing.assert_allclose(l_sh, l_xla, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_sh), jax.tree.leaves(g_xla)):
    # float32 sums in another order: errors relative to the leaf's largest gradient.
    np.testing.assert_allclose(a, b, atol=1e-4 * float(np.abs(b).max()) + 1e-7, rtol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_output(micro):
  model, params, x = micro
  params = jax.tree.map(jnp.float32, params)
  f32 = model.apply({'params': params}, x)
  bf16 = model.clone(dtype=jnp.bfloat16).apply({'params': params}, x)
  assert bf16.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(bf16 - f32))) < 0.1 * float(jnp.max(jnp.abs(f32)))
  assert not np.allclose(bf16, f32, atol=1e-6)  # bfloat16 really was used.


def test_configuration_errors_name_the_field():
  x = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match='dual_pixel_task needs inp_channels=6'):
    restormer.Restormer(dual_pixel_task=True, dim=8).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='layernorm_type'):
    registry.build_preset('restormer', 'micro', layernorm_type='Layer').init(
        jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='expects 6 input channels'):
    registry.build_preset('restormer', 'dual_pixel', dim=8).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='attention heads'):
    registry.build_preset('restormer', 'micro', heads=(3, 1, 2, 2)).init(jax.random.PRNGKey(0), x)
  with pytest.raises(ValueError, match='Unknown Restormer preset'):
    registry.build_preset('restormer', 'large')


def test_dual_pixel_preset_takes_two_views():
  model = registry.build_preset('restormer', 'dual_pixel', dim=8, num_blocks=(1, 1, 1, 1),
                                          num_refinement_blocks=1, heads=(1, 1, 1, 1))
  x = jnp.ones((1, 16, 16, 6))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(variables, x).shape == (1, 16, 16, 3)
  assert 'skip_conv' in variables['params']


def test_registry_builds_restormer_and_lora_skips_its_depthwise_convs():
  config = ml_collections.ConfigDict(dict(name='restormer', preset='micro', width=16,
                                          dtype='float32', conv_impl='auto'))
  model = registry.build_model(config)
  assert model.dim == 16  # model.width overrides Restormer's dim.
  arch = registry.architecture(config)
  assert arch['dim'] == 16 and arch['layernorm_type'] == 'WithBias'
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
  plan = lora.make_plan(params, targets=(r'.*/kernel',), rank=2, alpha=2.0,
                        exclude=(registry.entry('restormer').depthwise_kernels,))
  kernels = [p for p in trees.flatten(params) if p.endswith('/kernel')]
  depthwise = [p for p in kernels if p.endswith('dwconv/kernel')]
  assert len(depthwise) == 2 * 8  # qkv_dwconv and ffn.dwconv in each of the 8 blocks.
  assert sorted(plan.paths) == sorted(set(kernels) - set(depthwise))
