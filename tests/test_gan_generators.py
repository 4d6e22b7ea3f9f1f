"""Tests for the GAN generators RRDBNet (ESRGAN), MSRResNet (SRGAN) and MESRGAN.

Parameter counts against the published numbers (or a closed form), the dense and
inverted-residual blocks against float64 NumPy, whole networks against PyTorch functional
forwards written from the BasicSR layouts (pixel-unshuffle, nearest and bilinear
interpolation, activation slopes), BasicSR's initialisation, formulations, mixed precision,
input errors and the registry entries. All on tiny widths: the file runs in seconds on CPU.
"""

import functools
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sr_jax.adapt import adapters, faig
from sr_jax.models import layers, mesrgan, registry, rrdbnet, srresnet
from sr_jax.util import trees

build_mesrgan = functools.partial(registry.build_preset, 'mesrgan')
build_rrdbnet = functools.partial(registry.build_preset, 'rrdbnet')
build_srresnet = functools.partial(registry.build_preset, 'srresnet')


def _abstract_params(model, shape=(1, 16, 16, 3)):
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']


def _count(model):
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(_abstract_params(model)))


def _init(model, shape, seed=0):
  """The model's own initialisation (jitted: one compilation instead of one per op)."""
  x = jnp.zeros(shape, jnp.float32)
  return jax.jit(model.init)(jax.random.PRNGKey(seed), x)['params']


def _random_params(model, shape, seed):
  """Unit-gain random params (std 1/sqrt(fan_in) kernels, std 0.1 biases) of the model's
  parameter shapes, so every branch, including the 0.1-initialised residual ones, contributes
  visibly to the output."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    fan_in = math.prod(leaf.shape[:-1]) if 'kernel' in name else 100
    return jnp.asarray(rng.standard_normal(leaf.shape) / math.sqrt(fan_in), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, _abstract_params(model, shape))


def _apply(model, params, x):
  return np.asarray(jax.jit(model.apply)({'params': params}, x))


def _image(shape, seed=1):
  return np.random.default_rng(seed).random(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Parameter counts.


def _conv3_params(cin, cout):
  return 9 * cin * cout + cout


def _mesrgan_count(nf, nb, g, t, channels=3):
  """Closed form: trunk 3x3 convs plus 3 RDBs per block of five inverted-residual blocks."""
  trunk = _conv3_params(channels, nf) + 4 * _conv3_params(nf, nf) + _conv3_params(nf, channels)
  block = lambda cin, cout: (cin * t * cin + t * cin) + (9 * t * cin + t * cin) + (
      t * cin * cout + cout)
  rdb = sum(block(nf + k * g, g) for k in range(4)) + block(nf + 4 * g, nf)
  return trunk + nb * 3 * rdb


def test_published_parameter_counts():
  # ESRGAN's RRDB_ESRGAN_x4 and BasicSR's MSRResNet_x4 (their published parameter counts).
  assert _count(registry.build_preset('rrdbnet', 'x4', impl='xla')) == 16_697_987
  assert _count(registry.build_preset('srresnet', 'x4', impl='xla')) == 1_517_571
  # x2 pixel-unshuffles the input (conv_first takes 12 channels); x3 has no conv_up2.
  # (Counted on one-block trunks: the layouts differ outside the body only.)
  count = lambda build, preset: _count(build(preset, num_block=1))
  x4 = count(build_rrdbnet, 'x4')
  assert count(build_rrdbnet, 'x2') == x4 + 9 * 64 * 9
  assert count(build_rrdbnet, 'x3') == x4 - _conv3_params(64, 64)
  x4, up = count(build_srresnet, 'x4'), _conv3_params(64, 256)
  assert count(build_srresnet, 'x2') == x4 - up
  assert count(build_srresnet, 'x3') == x4 - 2 * up + _conv3_params(64, 576)


def test_mesrgan_parameter_count_closed_form():
  assert _count(registry.build_preset('mesrgan', 'x4', impl='xla')) == _mesrgan_count(64, 23, 32, 6)
  assert _mesrgan_count(64, 23, 32, 6) == 52_255_619  # 3.1x ESRGAN's 16,697,987.
  assert _count(registry.build_preset('mesrgan', 'micro', expansion=3)) == _mesrgan_count(16, 1, 8, 3)


def test_parameter_names_follow_the_converter_contract():
  paths = set(trees.flatten(_abstract_params(registry.build_preset('rrdbnet', 'micro'))))
  assert {'conv_first/kernel', 'body_0/rdb3/conv5/bias', 'conv_body/kernel', 'conv_up1/kernel',
          'conv_up2/kernel', 'conv_hr/bias', 'conv_last/kernel'} <= paths
  paths = set(trees.flatten(_abstract_params(registry.build_preset('mesrgan', 'micro'))))
  assert {f'body_0/rdb2/conv4/{m}/kernel' for m in ('expand', 'depthwise', 'project')} <= paths
  paths = set(trees.flatten(_abstract_params(registry.build_preset('srresnet', 'micro'))))
  assert {'body_0/conv1/kernel', 'body_0/conv2/bias', 'upconv1/kernel', 'upconv2/kernel'} <= paths


# ----------------------------------------------------------------------------------------------
# Shapes and input errors.


@pytest.mark.parametrize('scale', [1, 2, 3, 4])
@pytest.mark.parametrize('build', [build_rrdbnet, build_mesrgan])
def test_output_shapes(build, scale):
  model = build('micro', scale=scale)
  assert model.size_multiple == {1: 4, 2: 2}.get(scale, 1)
  assert model.input_channels == 3
  x = jax.ShapeDtypeStruct((2, 8, 12, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']
  out = jax.eval_shape(model.apply, {'params': params}, x)
  assert out.shape == (2, 8 * scale, 12 * scale, 3) and out.dtype == jnp.float32
  assert params['conv_first']['kernel'].shape[2] == 3 * model.size_multiple ** 2
  assert ('conv_up2' in params) == (scale != 3)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_srresnet_output_shapes(scale):
  model = registry.build_preset('srresnet', 'micro', scale=scale)
  assert model.size_multiple == 1 and model.scale == scale
  x = jax.ShapeDtypeStruct((1, 5, 7, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']
  assert jax.eval_shape(model.apply, {'params': params}, x).shape == (1, 5 * scale, 7 * scale, 3)


def _init_error(model, shape):
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def test_input_errors_name_the_problem_and_the_fix():
  with pytest.raises(ValueError, match=r'scale 2 pixel-unshuffles .* multiples of 2 .*7x8.*Pad'):
    _init_error(registry.build_preset('rrdbnet', 'micro', scale=2), (1, 7, 8, 3))
  with pytest.raises(ValueError, match=r'multiples of 4'):
    _init_error(registry.build_preset('mesrgan', 'micro', scale=1), (1, 8, 6, 3))
  with pytest.raises(ValueError, match=r'supports scale \(1, 2, 3, 4\), got scale=5'):
    _init_error(registry.build_preset('rrdbnet', 'micro', scale=5), (1, 8, 8, 3))
  with pytest.raises(ValueError, match=r'supports scale \(2, 3, 4\), got scale=1'):
    _init_error(registry.build_preset('srresnet', 'micro', scale=1), (1, 8, 8, 3))
  with pytest.raises(ValueError, match=r'3 channels \(num_in_ch\), got shape \(1, 8, 8, 4\)'):
    _init_error(registry.build_preset('rrdbnet', 'micro'), (1, 8, 8, 4))
  with pytest.raises(ValueError, match=r'expansion must be a positive integer'):
    _init_error(registry.build_preset('mesrgan', 'micro', expansion=0), (1, 8, 8, 3))
  with pytest.raises(ValueError, match=r"Unknown RRDBNet preset 'x8'; available"):
    registry.build_preset('rrdbnet', 'x8')


# ----------------------------------------------------------------------------------------------
# Blocks against float64 NumPy (NHWC, HWIO kernels).


def _np_conv3x3(x, p):
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  k = np.asarray(p['kernel'], np.float64)
  out = sum(np.einsum('nhwc,cd->nhwd', padded[:, i:i + h, j:j + w], k[i, j])
            for i in range(3) for j in range(3))
  return out + np.asarray(p['bias'], np.float64)


def _np_lrelu(x, slope):
  return np.where(x >= 0, x, slope * x)


def _np_inverted_residual(x, p):
  y = np.einsum('nhwc,cd->nhwd', x, np.asarray(p['expand']['kernel'], np.float64)[0, 0])
  y = _np_lrelu(y + np.asarray(p['expand']['bias'], np.float64), 0.2)
  padded = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
  k = np.asarray(p['depthwise']['kernel'], np.float64)
  h, w = x.shape[1:3]
  y = sum(padded[:, i:i + h, j:j + w] * k[i, j, 0] for i in range(3) for j in range(3))
  y = _np_lrelu(y + np.asarray(p['depthwise']['bias'], np.float64), 0.2)
  y = np.einsum('nhwc,cd->nhwd', y, np.asarray(p['project']['kernel'], np.float64)[0, 0])
  y = y + np.asarray(p['project']['bias'], np.float64)
  return y + x if x.shape[-1] == y.shape[-1] else y


def _np_dense_block(x, p, conv):
  features = [x]
  for k in range(1, 5):
    features.append(_np_lrelu(conv(np.concatenate(features, -1), p[f'conv{k}']), 0.2))
  return conv(np.concatenate(features, -1), p['conv5']) * 0.2 + x


@pytest.mark.parametrize('net', [rrdbnet.RRDBNet, mesrgan.MESRGAN])
def test_dense_block_matches_numpy(net):
  model = net(impl='xla', expansion=2) if net is mesrgan.MESRGAN else net(impl='xla')
  block = rrdbnet.ResidualDenseBlock(num_grow_ch=4, conv=model.make_dense_conv())
  x = _image((2, 5, 6, 8)) - 0.5
  params = _random_params(block, x.shape, seed=3)
  got = _apply(block, params, x)
  conv = _np_inverted_residual if net is mesrgan.MESRGAN else _np_conv3x3
  want = _np_dense_block(x.astype(np.float64), jax.tree.map(np.asarray, params), conv)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cin,cout', [(6, 6), (6, 4)])
def test_inverted_residual_matches_numpy(cin, cout):
  block = mesrgan.InvertedResidual(cout, expansion=3, impl='xla')
  x = _image((2, 4, 7, cin)) - 0.5
  params = _random_params(block, x.shape, seed=4)
  got = _apply(block, params, x)
  want = _np_inverted_residual(x.astype(np.float64), jax.tree.map(np.asarray, params))
  # (The NumPy block adds its input exactly when cin == cout, so both cases are pinned.)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Whole networks against PyTorch functional forwards of the same weights.


def _torch_conv(x, p, torch):
  kernel = torch.from_numpy(np.asarray(p['kernel'], np.float64)).permute(3, 2, 0, 1)
  bias = torch.from_numpy(np.asarray(p['bias'], np.float64))
  return torch.nn.functional.conv2d(x, kernel, bias, padding=1)


def _torch_rrdbnet(params, x, scale, torch):
  """BasicSR's RRDBNet forward (plus sr_jax's x3) in NCHW float64 with torch.nn.functional."""
  F = torch.nn.functional
  lrelu = lambda t: F.leaky_relu(t, 0.2)
  conv = lambda t, name, p=params: _torch_conv(t, p[name], torch)
  feat = F.pixel_unshuffle(x, {1: 4, 2: 2}[scale]) if scale in (1, 2) else x
  feat = conv(feat, 'conv_first')
  body, i = feat, 0
  while f'body_{i}' in params:
    rrdb_in = body
    for j in (1, 2, 3):
      p = params[f'body_{i}'][f'rdb{j}']
      feats = [body]
      for k in range(1, 5):
        feats.append(lrelu(conv(torch.cat(feats, 1), f'conv{k}', p)))
      body = conv(torch.cat(feats, 1), 'conv5', p) * 0.2 + body
    body, i = body * 0.2 + rrdb_in, i + 1
  feat = feat + conv(body, 'conv_body')
  for k, factor in enumerate((3,) if scale == 3 else (2, 2), start=1):
    feat = lrelu(conv(F.interpolate(feat, scale_factor=factor, mode='nearest'), f'conv_up{k}'))
  return conv(lrelu(conv(feat, 'conv_hr')), 'conv_last')


def _torch_srresnet(params, x, scale, torch):
  """BasicSR's MSRResNet forward in NCHW float64 with torch.nn.functional."""
  F = torch.nn.functional
  lrelu = lambda t: F.leaky_relu(t, 0.1)
  conv = lambda t, name, p=params: _torch_conv(t, p[name], torch)
  feat, i = lrelu(conv(x, 'conv_first')), 0
  while f'body_{i}' in params:
    p = params[f'body_{i}']
    feat, i = feat + conv(F.relu(conv(feat, 'conv1', p)), 'conv2', p), i + 1
  for k, factor in enumerate((2, 2) if scale == 4 else (scale,), start=1):
    feat = lrelu(F.pixel_shuffle(conv(feat, f'upconv{k}'), factor))
  out = conv(lrelu(conv(feat, 'conv_hr')), 'conv_last')
  return out + F.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=False)


def _compare_with_torch(model, reference, shape, seed):
  torch = pytest.importorskip('torch')
  x = _image(shape, seed)
  params = _random_params(model, shape, seed)
  got = _apply(model, params, x)
  x_t = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)
  want = reference(jax.tree.map(np.asarray, params), x_t, model.scale, torch)
  want = want.permute(0, 2, 3, 1).numpy()
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize('scale,shape', [(1, (1, 8, 12, 3)), (2, (1, 6, 10, 3)),
                                         (3, (1, 5, 7, 3)), (4, (2, 5, 7, 3))])
def test_rrdbnet_matches_torch(scale, shape):
  model = rrdbnet.RRDBNet(num_feat=8, num_block=1, num_grow_ch=4, scale=scale, impl='xla')
  _compare_with_torch(model, _torch_rrdbnet, shape, seed=10 + scale)


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_srresnet_matches_torch(scale):
  model = srresnet.MSRResNet(num_feat=8, num_block=2, scale=scale, impl='xla')
  _compare_with_torch(model, _torch_srresnet, (2, 5, 7, 3), seed=20 + scale)


@pytest.mark.parametrize('factor', [2, 3, 4])
def test_bilinear_upsample_matches_torch(factor):
  torch = pytest.importorskip('torch')
  x = _image((2, 5, 7, 3), seed=factor)
  got = np.asarray(layers.bilinear_upsample(jnp.asarray(x), factor))
  x_t = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(x_t, scale_factor=factor, mode='bilinear',
                                         align_corners=False).permute(0, 2, 3, 1).numpy()
  # Within float32 rounding of PyTorch's float64 result (its own float32 path is 3e-7 away).
  np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)


# ----------------------------------------------------------------------------------------------
# Initialisation (BasicSR: He-normal x 0.1 and zero biases where it calls default_init_weights).


def _normalised_std(kernels, scale_of):
  """Std of kernel entries divided by a per-kernel reference std, pooled."""
  return float(np.std(np.concatenate([np.asarray(k).ravel() / scale_of(k) for k in kernels])))


def _he_std(k):
  return math.sqrt(2.0 / math.prod(k.shape[:-1]))


def _torch_default_std(k):
  # kaiming_uniform_(a=sqrt(5)) = uniform(+-1/sqrt(fan_in)): std 1/sqrt(3 fan_in).
  return 1.0 / math.sqrt(3.0 * math.prod(k.shape[:-1]))


def test_rrdbnet_init_scales_dense_block_convs_only():
  flat = trees.flatten(_init(registry.build_preset('rrdbnet', 'micro'), (1, 4, 4, 3)))
  rdb = [v for p, v in flat.items() if p.startswith('body_') and p.endswith('kernel')]
  trunk = [v for p, v in flat.items() if not p.startswith('body_') and p.endswith('kernel')]
  # RDB convs: He-normal x 0.1, i.e. 0.1 * sqrt(6) = 0.245 of PyTorch's default std.
  assert _normalised_std(rdb, _he_std) == pytest.approx(0.1, rel=0.03)
  assert _normalised_std(rdb, _torch_default_std) == pytest.approx(0.1 * math.sqrt(6), rel=0.03)
  assert all(not np.any(v) for p, v in flat.items() if p.startswith('body_') and 'bias' in p)
  # Trunk convs keep PyTorch's default (uniform kernel and bias in +-1/sqrt(fan_in)).
  assert _normalised_std(trunk, _torch_default_std) == pytest.approx(1.0, rel=0.05)
  bias = np.asarray(flat['conv_body/bias'])
  assert np.all(np.abs(bias) <= 1 / math.sqrt(9 * 16)) and np.std(bias) > 0


def test_srresnet_init_scales_every_conv():
  flat = trees.flatten(_init(registry.build_preset('srresnet', 'micro', num_block=4), (1, 4, 4, 3)))
  kernels = [v for p, v in flat.items() if p.endswith('kernel')]
  assert _normalised_std(kernels, _he_std) == pytest.approx(0.1, rel=0.03)
  assert all(not np.any(v) for p, v in flat.items() if p.endswith('bias'))


def test_mesrgan_init_scales_the_projection():
  # One dense block (the trunk is RRDBNet's, tested above): He-normal everywhere, the 0.1 only
  # on the linear projection, zero biases.
  block = rrdbnet.ResidualDenseBlock(8, mesrgan.MESRGAN(impl='xla').make_dense_conv())
  flat = trees.flatten(_init(block, (1, 4, 4, 16)))
  pick = lambda part: [v for p, v in flat.items() if f'/{part}/kernel' in p]
  assert _normalised_std(pick('project'), _he_std) == pytest.approx(0.1, rel=0.03)
  assert _normalised_std(pick('expand') + pick('depthwise'), _he_std) == pytest.approx(1, rel=0.03)
  assert all(not np.any(v) for p, v in flat.items() if p.endswith('bias'))


# ----------------------------------------------------------------------------------------------
# Formulations, precision, registry.


@functools.lru_cache(maxsize=None)
def _micro_output(build, impl='shifted', dtype=jnp.float32):
  """The 'micro' preset's output on fixed random params and input (cached across tests)."""
  x = _image((1, 8, 6, 3))
  params = _random_params(build('micro'), x.shape, seed=5)
  return _apply(build('micro', impl=impl, dtype=dtype), params, x)


def test_conv_impls_agree():
  # 'shifted' changes MESRGAN's 1x1 (matmul) and depthwise (shifted sums) convs; dense 3x3
  # convs, all RRDBNet and MSRResNet have, use lax.conv under every impl (layers.Conv).
  xla, shifted = (_micro_output(build_mesrgan, impl) for impl in ('xla', 'shifted'))
  np.testing.assert_allclose(xla, shifted, rtol=1e-5, atol=1e-5 * np.abs(xla).max())


@pytest.mark.parametrize('build', [build_mesrgan, build_srresnet])
def test_bfloat16_compute_keeps_float32_params(build):
  declared = _abstract_params(build('micro', dtype=jnp.bfloat16), (1, 8, 6, 3))
  assert {leaf.dtype for leaf in jax.tree.leaves(declared)} == {jnp.dtype(jnp.float32)}
  low, ref = _micro_output(build, dtype=jnp.bfloat16), _micro_output(build)
  assert low.dtype == np.float32 and np.all(np.isfinite(low))
  assert 0 < np.abs(low - ref).max() < 0.05 * np.abs(ref).max()


def _model_config(name, preset, **kw):
  fields = dict(name=name, preset=preset, width=0, dtype='float32', conv_impl='auto')
  return ml_collections.ConfigDict({**fields, **kw})


@pytest.mark.parametrize('name,cls', [('rrdbnet', rrdbnet.RRDBNet),
                                      ('srresnet', srresnet.MSRResNet),
                                      ('mesrgan', mesrgan.MESRGAN)])
def test_registry_entries(name, cls):
  model = registry.build_model(_model_config(name, 'micro'))
  assert type(model) is cls and model.num_feat == 16 and model.scale == 4
  arch = registry.architecture(_model_config(name, 'micro'))
  assert arch['name'] == name and arch['scale'] == 4
  assert registry.matching_preset(arch) == 'micro'
  rebuilt = adapters.model_from_architecture(arch)
  assert registry.module_architecture(name, rebuilt) == arch
  wide = registry.build_model(_model_config(name, 'x4', width=24, dtype='bfloat16'))
  assert wide.num_feat == 24 and wide.dtype == jnp.bfloat16
  # The depthwise regex matches exactly MESRGAN's depthwise kernels and nothing in dense nets.
  pattern = registry.entry(name).depthwise_kernels
  paths = trees.flatten(_abstract_params(model))
  matched = {p for p in paths if re.fullmatch(pattern, p)}
  assert matched == {p for p in paths if p.endswith('/depthwise/kernel')}
  assert bool(matched) == (name == 'mesrgan')
  groups = {faig.param_group(p, pattern) for p in paths}
  assert groups == ({'conv', 'bias', 'depthwise'} if name == 'mesrgan' else {'conv', 'bias'})
