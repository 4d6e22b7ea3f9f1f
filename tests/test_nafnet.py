"""Tests for sr_jax.models.nafnet against an independent description of the official model.

The official NAFNet_arch.py is reproduced here as (a) its PyTorch state-dict shapes and (b) a
float64 NumPy forward pass in NCHW with PyTorch weight layouts. The Flax model must hold exactly
those parameters under mechanically mapped names and compute the same function.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sr_jax.models import nafnet, registry

PUBLISHED_MILLIONS = {'sidd_w32': 29.16, 'sidd_w64': 115.98, 'gopro_w32': 17.11,
                      'gopro_w64': 67.89}



# ----------------------------------------------------------------------------------------------
# The official architecture, described independently of the Flax code.


def _official_block_shapes(c):
  """State-dict shapes of one official NAFBlock(c) (DW_Expand = FFN_Expand = 2)."""
  return {'conv1.weight': (2 * c, c, 1, 1), 'conv1.bias': (2 * c,),
          'conv2.weight': (2 * c, 1, 3, 3), 'conv2.bias': (2 * c,),
          'conv3.weight': (c, c, 1, 1), 'conv3.bias': (c,),
          'sca.1.weight': (c, c, 1, 1), 'sca.1.bias': (c,),
          'conv4.weight': (2 * c, c, 1, 1), 'conv4.bias': (2 * c,),
          'conv5.weight': (c, c, 1, 1), 'conv5.bias': (c,),
          'norm1.weight': (c,), 'norm1.bias': (c,), 'norm2.weight': (c,), 'norm2.bias': (c,),
          'beta': (1, c, 1, 1), 'gamma': (1, c, 1, 1)}


def _official_shapes(cfg, img_channel=3):
  """State-dict key -> shape of the official NAFNet for a preset's layout."""
  shapes, chan = {}, cfg['width']
  add_blocks = lambda prefix, c: shapes.update(
      {f'{prefix}.{k}': v for k, v in _official_block_shapes(c).items()})
  shapes['intro.weight'], shapes['intro.bias'] = (chan, img_channel, 3, 3), (chan,)
  for s, num in enumerate(cfg['enc_blk_nums']):
    for b in range(num):
      add_blocks(f'encoders.{s}.{b}', chan)
    shapes[f'downs.{s}.weight'], shapes[f'downs.{s}.bias'] = (2 * chan, chan, 2, 2), (2 * chan,)
    chan *= 2
  for b in range(cfg['middle_blk_num']):
    add_blocks(f'middle_blks.{b}', chan)
  for s, num in enumerate(cfg['dec_blk_nums']):
    shapes[f'ups.{s}.0.weight'] = (2 * chan, chan, 1, 1)
    chan //= 2
    for b in range(num):
      add_blocks(f'decoders.{s}.{b}', chan)
  shapes['ending.weight'], shapes['ending.bias'] = (img_channel, cfg['width'], 3, 3), (3,)
  return shapes


def _closed_form_count(cfg, img_channel=3):
  """Parameter count by formula: a block holds 7c^2 + 33c parameters."""
  w, block = cfg['width'], lambda c: 7 * c * c + 33 * c
  total = (9 * img_channel * w + w) + (9 * w * img_channel + img_channel)
  for s, num in enumerate(cfg['enc_blk_nums']):
    c = w * 2 ** s
    total += num * block(c) + (4 * c * 2 * c + 2 * c) + 2 * c * 4 * c  # blocks, down, up
  total += cfg['middle_blk_num'] * block(w * 2 ** len(cfg['enc_blk_nums']))
  for s, num in enumerate(cfg['dec_blk_nums']):
    total += num * block(w * 2 ** (len(cfg['dec_blk_nums']) - 1 - s))
  return total


def torch_key_to_flax_path(key):
  """Maps an official state-dict key to the Flax param path, e.g. ups.0.0.weight -> ups_0/kernel."""
  path = re.sub(r'^(encoders|decoders)\.(\d+)\.(\d+)\.', r'\1_\2_\3/', key)
  path = re.sub(r'^(middle_blks|downs)\.(\d+)\.', r'\1_\2/', path)
  path = re.sub(r'^ups\.(\d+)\.0\.', r'ups_\1/', path)
  path = path.replace('sca.1.', 'sca/').replace('.', '/')
  if path.endswith('/weight'):
    leaf = 'scale' if re.search(r'norm\d/weight$', path) else 'kernel'
    path = path[:-len('weight')] + leaf
  return path


def _torch_to_flax_value(value):
  """OIHW conv weights -> HWIO; (1, C, 1, 1) beta/gamma -> (C,)."""
  if value.ndim == 4 and value.shape[0] == 1 and value.shape[2:] == (1, 1):
    return value.reshape(-1)
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


def _flax_shapes(preset, **overrides):
  model = registry.build_preset('nafnet', preset, **overrides)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  return {k: (v.shape, v.dtype) for k, v in
          traverse_util.flatten_dict(abstract['params'], sep='/').items()}


# ----------------------------------------------------------------------------------------------
# Parameters: counts, names, shapes.


@pytest.mark.parametrize('preset', sorted(PUBLISHED_MILLIONS))
def test_parameter_counts_match_official(preset):
  cfg = nafnet.PRESETS[preset]
  flax_count = sum(int(np.prod(shape)) for shape, _ in _flax_shapes(preset).values())
  official_count = sum(int(np.prod(s)) for s in _official_shapes(cfg).values())
  assert flax_count == official_count == _closed_form_count(cfg)
  assert round(flax_count / 1e6, 2) == PUBLISHED_MILLIONS[preset]


def test_sidd_w32_exact_count():
  assert _closed_form_count(nafnet.PRESETS['sidd_w32']) == 29_159_715


@pytest.mark.parametrize('preset', ['sidd_w32', 'gopro_w32', 'micro'])
def test_param_paths_map_one_to_one_from_pytorch_keys(preset):
  flax = _flax_shapes(preset)
  official = _official_shapes(nafnet.PRESETS[preset])
  mapped = {torch_key_to_flax_path(k): _torch_to_flax_value(np.zeros(s)).shape
            for k, s in official.items()}
  assert {k: shape for k, (shape, _) in flax.items()} == mapped
  assert all(dtype == jnp.float32 for _, dtype in flax.values())


def test_named_params_of_sidd_w32():
  flax = {k: shape for k, (shape, _) in _flax_shapes('sidd_w32').items()}
  assert flax['encoders_0_1/conv2/kernel'] == (3, 3, 1, 64)
  assert flax['encoders_0_1/sca/kernel'] == (1, 1, 32, 32)
  assert flax['encoders_0_1/norm1/scale'] == (32,)
  assert flax['encoders_0_1/beta'] == flax['encoders_0_1/gamma'] == (32,)
  assert flax['downs_3/kernel'] == (2, 2, 256, 512)
  assert flax['middle_blks_11/conv4/kernel'] == (1, 1, 512, 1024)
  assert flax['ups_0/kernel'] == (1, 1, 512, 1024) and 'ups_0/bias' not in flax
  assert flax['decoders_3_1/conv5/kernel'] == (1, 1, 32, 32)
  assert flax['ending/kernel'] == (3, 3, 32, 3)
  auto_name = re.compile(r'(^|/)[A-Z]\w*_\d+(/|$)')  # e.g. Conv_0, NAFBlock_3
  assert not [k for k in flax if auto_name.search(k)]


def test_depthwise_regex_names_exactly_the_depthwise_kernels():
  flax = _flax_shapes('tiny')
  matched = {k for k in flax if re.fullmatch(nafnet.DEPTHWISE_KERNELS, k)}
  depthwise = {k for k, (shape, _) in flax.items() if len(shape) == 4 and shape[2] == 1
               and shape[:2] == (3, 3)}
  assert matched == depthwise and len(matched) == 7


def test_presets_and_overrides():
  model = registry.build_preset('nafnet', 'gopro_w64', impl='xla', width=8)
  assert model.enc_blk_nums == (1, 1, 1, 28) and model.width == 8 and model.impl == 'xla'
  assert {'sidd_w32', 'sidd_w64', 'gopro_w32', 'gopro_w64', 'tiny', 'micro'} <= set(
      nafnet.PRESETS)
  with pytest.raises(ValueError, match='sidd_w32'):
    registry.build_preset('nafnet', 'sidd_w16')


# ----------------------------------------------------------------------------------------------
# The forward pass against a NumPy transcription of the official model.


def _np_conv(x, w, b=None, stride=1, pad=0, groups=1):
  """PyTorch Conv2d semantics in float64: x (N, C, H, W), w (O, C/groups, kh, kw)."""
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  out_c, group_c, kh, kw = w.shape
  ho, wo = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], out_c, ho, wo))
  per_group = out_c // groups
  for g in range(groups):
    xg, wg = x[:, g * group_c:(g + 1) * group_c], w[g * per_group:(g + 1) * per_group]
    for i in range(kh):
      for j in range(kw):
        patch = xg[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
        out[:, g * per_group:(g + 1) * per_group] += np.einsum('nchw,oc->nohw', patch,
                                                               wg[:, :, i, j])
  return out if b is None else out + b[None, :, None, None]


def _np_layernorm(x, w, b):
  mu = x.mean(1, keepdims=True)
  var = ((x - mu) ** 2).mean(1, keepdims=True)
  return w[None, :, None, None] * (x - mu) / np.sqrt(var + 1e-6) + b[None, :, None, None]


def _np_gate(x):
  half = x.shape[1] // 2
  return x[:, :half] * x[:, half:]


def _np_block(sd, p, inp):
  x = _np_layernorm(inp, sd[p + 'norm1.weight'], sd[p + 'norm1.bias'])
  x = _np_conv(x, sd[p + 'conv1.weight'], sd[p + 'conv1.bias'])
  x = _np_conv(x, sd[p + 'conv2.weight'], sd[p + 'conv2.bias'], pad=1, groups=x.shape[1])
  x = _np_gate(x)
  x = x * _np_conv(x.mean((2, 3), keepdims=True), sd[p + 'sca.1.weight'], sd[p + 'sca.1.bias'])
  x = _np_conv(x, sd[p + 'conv3.weight'], sd[p + 'conv3.bias'])
  y = inp + x * sd[p + 'beta']
  x = _np_conv(_np_layernorm(y, sd[p + 'norm2.weight'], sd[p + 'norm2.bias']),
               sd[p + 'conv4.weight'], sd[p + 'conv4.bias'])
  x = _np_conv(_np_gate(x), sd[p + 'conv5.weight'], sd[p + 'conv5.bias'])
  return y + x * sd[p + 'gamma']


def _np_pixel_shuffle(x, r):
  """torch.nn.PixelShuffle on NCHW: out[n, c, h*r+i, w*r+j] = in[n, c*r*r + i*r + j, h, w]."""
  n, crr, h, w = x.shape
  c = crr // (r * r)
  return x.reshape(n, c, r, r, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, c, h * r, w * r)


def _np_nafnet(sd, cfg, inp):
  """The official NAFNet.forward on NCHW input."""
  h, w = inp.shape[2:]
  mult = 2 ** len(cfg['enc_blk_nums'])
  inp = np.pad(inp, ((0, 0), (0, 0), (0, -h % mult), (0, -w % mult)))  # check_image_size
  x = _np_conv(inp, sd['intro.weight'], sd['intro.bias'], pad=1)
  skips = []
  for s, num in enumerate(cfg['enc_blk_nums']):
    for b in range(num):
      x = _np_block(sd, f'encoders.{s}.{b}.', x)
    skips.append(x)
    x = _np_conv(x, sd[f'downs.{s}.weight'], sd[f'downs.{s}.bias'], stride=2)
  for b in range(cfg['middle_blk_num']):
    x = _np_block(sd, f'middle_blks.{b}.', x)
  for s, num in enumerate(cfg['dec_blk_nums']):
    x = _np_pixel_shuffle(_np_conv(x, sd[f'ups.{s}.0.weight']), 2) + skips[-1 - s]
    for b in range(num):
      x = _np_block(sd, f'decoders.{s}.{b}.', x)
  x = _np_conv(x, sd['ending.weight'], sd['ending.bias'], pad=1) + inp
  return x[:, :, :h, :w]


def _random_state_dict(cfg, seed=0):
  """Random official weights; beta/gamma and norms non-trivial so every block matters."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in _official_shapes(cfg).items():
    fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else 1
    value = rng.uniform(-1, 1, shape) / np.sqrt(fan_in)
    if key.endswith(('beta', 'gamma')) or '.norm' in key:
      value = rng.uniform(0.5, 1.5, shape) * (1 if key.endswith('weight') else 0.3)
    sd[key] = value
  return sd


def _to_flax_params(sd):
  flat = {tuple(torch_key_to_flax_path(k).split('/')): jnp.asarray(_torch_to_flax_value(v),
                                                                    jnp.float32)
          for k, v in sd.items()}
  return traverse_util.unflatten_dict(flat)


@pytest.mark.parametrize('impl', ['xla', 'shifted'])
def test_forward_matches_numpy_official(impl):
  cfg = nafnet.PRESETS['micro']
  sd = _random_state_dict(cfg)
  x = np.random.default_rng(1).uniform(0, 1, (2, 13, 18, 3))  # not a multiple of 4: pads
  expected = _np_nafnet(sd, cfg, x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
  model = registry.build_preset('nafnet', 'micro', impl=impl)
  y = _apply(model, _to_flax_params(sd), jnp.asarray(x, jnp.float32))
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert np.abs(expected - x).mean() > 0.1  # the network does something
  np.testing.assert_allclose(np.asarray(y), expected, atol=2e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Invariants of the Flax model.


def _tiny_params(seed=0):
  """Initialised tiny-preset params with beta/gamma made non-zero so blocks contribute."""
  model = registry.build_preset('nafnet', 'tiny')
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 3)))['params']
  def perturb(path, leaf):
    if path[-1].key in ('beta', 'gamma'):
      return jax.random.uniform(jax.random.PRNGKey(len(path)), leaf.shape, minval=0.5, maxval=1)
    return leaf
  return jax.tree_util.tree_map_with_path(perturb, params)


def _apply(model, params, x):
  """Jitted apply: one compilation is much faster than op-by-op dispatch of a whole model."""
  return jax.jit(model.apply)({'params': params}, x)


def _image(shape, seed=2):
  return jax.random.uniform(jax.random.PRNGKey(seed), shape)


def test_shifted_and_xla_impls_agree_forward_and_gradient():
  params, x = _tiny_params(), _image((2, 24, 40, 3))
  outputs, grads = {}, {}
  for impl in ('xla', 'shifted'):
    model = registry.build_preset('nafnet', 'tiny', impl=impl)
    loss = lambda p, m=model: jnp.mean(m.apply({'params': p}, x) ** 2)
    outputs[impl], grads[impl] = jax.jit(jax.value_and_grad(loss))(params)
  np.testing.assert_allclose(outputs['shifted'], outputs['xla'], rtol=1e-5)
  for g_s, g_x in zip(jax.tree.leaves(grads['shifted']), jax.tree.leaves(grads['xla'])):
    np.testing.assert_allclose(g_s, g_x, atol=1e-5, rtol=1e-4)


def test_any_size_is_zero_padded_and_cropped():
  """Output keeps odd sizes and equals the model on the bottom/right zero-padded input."""
  model, params = registry.build_preset('nafnet', 'tiny'), _tiny_params()
  x = _image((1, 17, 23, 3))
  y = _apply(model, params, x)
  assert y.shape == x.shape
  padded = jnp.pad(x, ((0, 0), (0, 7), (0, 1), (0, 0)))  # to 24 x 24, a multiple of 8
  np.testing.assert_allclose(y, _apply(model, params, padded)[:, :17, :23],
                             atol=1e-6)


def test_zero_ending_makes_the_network_the_identity():
  """output = ending(features) + input, so a zero ending conv returns the input exactly."""
  model, params = registry.build_preset('nafnet', 'tiny'), _tiny_params()
  params['ending'] = jax.tree.map(jnp.zeros_like, params['ending'])
  x = _image((2, 16, 20, 3))
  np.testing.assert_array_equal(_apply(model, params, x), x)


def test_fresh_block_is_identity_and_beta_gamma_start_at_zero():
  block = nafnet.NAFBlock()
  x = _image((1, 8, 8, 16))
  params = block.init(jax.random.PRNGKey(0), x)['params']
  assert not params['beta'].any() and not params['gamma'].any()
  np.testing.assert_array_equal(block.apply({'params': params}, x), x)


def test_blocks_without_residual_scales_reduce_to_linear_unet():
  """With beta = gamma = 0 every block is the identity, so the network is affine in x."""
  model = registry.build_preset('nafnet', 'micro')
  params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 8, 8, 3)))['params']
  f = jax.jit(lambda x: model.apply({'params': params}, x))
  a, b = _image((1, 8, 12, 3), 4), _image((1, 8, 12, 3), 5)
  np.testing.assert_allclose(f(a) + f(b) - f(jnp.zeros_like(a)), f(a + b), atol=1e-5)


def test_bfloat16_runs_with_float32_params_and_output():
  params, x = _tiny_params(), _image((1, 16, 16, 3))
  y32 = _apply(registry.build_preset('nafnet', 'tiny'), params, x)
  model = registry.build_preset('nafnet', 'tiny', dtype=jnp.bfloat16)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))
  y16 = _apply(model, params, x)
  assert y16.dtype == jnp.float32 and y16.shape == x.shape
  assert bool(jnp.isfinite(y16).all())
  np.testing.assert_allclose(y16, y32, atol=0.1)
  assert float(jnp.abs(y16 - y32).mean()) < 0.02
