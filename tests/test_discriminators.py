"""Tests for sr_jax.models.discriminators against PyTorch transcriptions of BasicSR's
discriminator_arch.py, NumPy statistics and SVDs, and closed-form parameter counts.

The PyTorch references below are written from the architecture description (layer order,
channel counts, BatchNorm placement, torch.nn.utils.spectral_norm); weights go from their
state_dict to Flax through `variables_from_torch`, so the converter is tested with the forward.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from sr_jax.models import discriminators as D, layers

RNG = jax.random.PRNGKey(0)
# One tiny module per network, shared by the tests so each jitted function compiles once.
VGG = D.VGGStyleDiscriminator(num_feat=4)
UNET = D.UNetDiscriminatorSN(num_feat=4)
UNET_SHAPE = (2, 16, 24, 3)  # Non-square, sides multiples of 8.


def _loss_and_grad(module):
  """jit of ((mean(logits^2), (logits, new batch_stats)), d/dparams) in training mode."""
  def loss(params, stats, x):
    logits, new = module.apply({'params': params, 'batch_stats': stats}, x, train=True,
                               mutable=['batch_stats'])
    return jnp.mean(logits ** 2), (logits, new['batch_stats'])
  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _eval(module):
  """jit of module.apply in eval mode, returning (logits, {'batch_stats': ...})."""
  return jax.jit(lambda v, x: module.apply(v, x, train=False, mutable=['batch_stats']))


_VGG_TRAIN, _VGG_EVAL = _loss_and_grad(VGG), _eval(VGG)
_UNET_TRAIN, _UNET_EVAL = _loss_and_grad(UNET), _eval(UNET)


@functools.cache
def _initial(name: str):
  """Initial variables of VGG (128) or UNET (UNET_SHAPE)."""
  if name == 'vgg':
    return D.init_discriminator(VGG, 128, RNG)
  return D.init_discriminator(UNET, UNET_SHAPE[1:3], RNG)


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _abstract_variables(module, height: int, width: int):
  x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  return jax.eval_shape(lambda k, x: module.init(k, x, train=False), RNG, x)


def _vgg_count_formula(cin: int, nf: int, size: int) -> int:
  """BasicSR's VGGStyleDiscriminator parameter count, written out layer by layer."""
  channels = [nf, 2 * nf, 4 * nf, 8 * nf, 8 * nf] + ([8 * nf] if size == 256 else [])
  count = cin * nf * 9 + nf + nf * nf * 16 + 2 * nf  # conv0_0 (+bias), conv0_1, bn0_1
  for prev, ch in zip(channels[:-1], channels[1:]):
    count += prev * ch * 9 + 2 * ch + ch * ch * 16 + 2 * ch  # convK_0, bnK_0, convK_1, bnK_1
  return count + 8 * nf * 16 * 100 + 100 + 100 + 1  # linear1, linear2


# ----------------------------------------------------------------------------------------------
# PyTorch references (BasicSR's layouts and attribute names).


def _torch_vgg(cin: int, nf: int, size: int):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class TorchVGG(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv0_0 = nn.Conv2d(cin, nf, 3, 1, 1, bias=True)
      self.conv0_1 = nn.Conv2d(nf, nf, 4, 2, 1, bias=False)
      self.bn0_1 = nn.BatchNorm2d(nf)
      channels = [nf, 2 * nf, 4 * nf, 8 * nf, 8 * nf] + ([8 * nf] if size == 256 else [])
      self.stages = len(channels)
      for k in range(1, len(channels)):
        setattr(self, f'conv{k}_0', nn.Conv2d(channels[k - 1], channels[k], 3, 1, 1, bias=False))
        setattr(self, f'bn{k}_0', nn.BatchNorm2d(channels[k]))
        setattr(self, f'conv{k}_1', nn.Conv2d(channels[k], channels[k], 4, 2, 1, bias=False))
        setattr(self, f'bn{k}_1', nn.BatchNorm2d(channels[k]))
      self.linear1 = nn.Linear(8 * nf * 16, 100)
      self.linear2 = nn.Linear(100, 1)

    def forward(self, x):
      act = lambda t: torch.nn.functional.leaky_relu(t, 0.2)
      feat = act(self.conv0_0(x))
      feat = act(self.bn0_1(self.conv0_1(feat)))
      for k in range(1, self.stages):
        feat = act(getattr(self, f'bn{k}_0')(getattr(self, f'conv{k}_0')(feat)))
        feat = act(getattr(self, f'bn{k}_1')(getattr(self, f'conv{k}_1')(feat)))
      return self.linear2(act(self.linear1(feat.reshape(feat.shape[0], -1))))

  return TorchVGG()


def _torch_unet(cin: int, nf: int):
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from torch.nn.utils import spectral_norm  # pylint: disable=g-import-not-at-top
  F = torch.nn.functional

  class TorchUNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.conv0 = nn.Conv2d(cin, nf, 3, 1, 1)
      self.conv1 = spectral_norm(nn.Conv2d(nf, 2 * nf, 4, 2, 1, bias=False))
      self.conv2 = spectral_norm(nn.Conv2d(2 * nf, 4 * nf, 4, 2, 1, bias=False))
      self.conv3 = spectral_norm(nn.Conv2d(4 * nf, 8 * nf, 4, 2, 1, bias=False))
      self.conv4 = spectral_norm(nn.Conv2d(8 * nf, 4 * nf, 3, 1, 1, bias=False))
      self.conv5 = spectral_norm(nn.Conv2d(4 * nf, 2 * nf, 3, 1, 1, bias=False))
      self.conv6 = spectral_norm(nn.Conv2d(2 * nf, nf, 3, 1, 1, bias=False))
      self.conv7 = spectral_norm(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
      self.conv8 = spectral_norm(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
      self.conv9 = nn.Conv2d(nf, 1, 3, 1, 1)

    def forward(self, x):
      act = lambda t: F.leaky_relu(t, 0.2)
      up = lambda t: F.interpolate(t, scale_factor=2, mode='bilinear', align_corners=False)
      x0 = act(self.conv0(x))
      x1 = act(self.conv1(x0))
      x2 = act(self.conv2(x1))
      x3 = act(self.conv3(x2))
      x4 = act(self.conv4(up(x3))) + x2
      x5 = act(self.conv5(up(x4))) + x1
      x6 = act(self.conv6(up(x5))) + x0
      return self.conv9(act(self.conv8(act(self.conv7(x6)))))

  return TorchUNet()


def _randomise_batchnorm(model, seed: int = 0) -> None:
  """Non-trivial BatchNorm affine parameters and running statistics."""
  import torch  # pylint: disable=g-import-not-at-top
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(0.5 + torch.rand(c, generator=gen))
        module.bias.copy_(0.2 * torch.randn(c, generator=gen))
        module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
        module.running_var.copy_(0.5 + torch.rand(c, generator=gen))


def _state(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _to_nchw(x: np.ndarray):
  import torch  # pylint: disable=g-import-not-at-top
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _torch_train_step(model, x: np.ndarray):
  """Training-mode logits (NCHW output as numpy) and d mean(logits^2) / d params, in Flax form."""
  model.train()
  model.zero_grad()
  out = model(_to_nchw(x))
  (out ** 2).mean().backward()
  grads = {name: p.grad.numpy().copy() for name, p in model.named_parameters()}
  return out.detach().numpy(), D.variables_from_torch(grads)['params']


def _assert_grads_close(actual, expected) -> None:
  """Gradients equal up to 1e-4 of each tensor's largest entry."""
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, atol=1e-4 * float(np.max(np.abs(e))) + 1e-8, rtol=0)


def _assert_tree_close(actual, expected, atol: float) -> None:
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------------
# VGG-style discriminator.


def test_vgg_full_size_parameter_count():
  for size in (128, 256):
    params = _abstract_variables(D.VGGStyleDiscriminator(input_size=size), size, size)['params']
    assert _count(params) == _vgg_count_formula(3, 64, size)
  # ESRGAN's VGG-style discriminator: "~14.5M params" for input 128.
  assert _vgg_count_formula(3, 64, 128) == 14_499_401
  pytest.importorskip('torch')
  reference = sum(p.numel() for p in _torch_vgg(3, 64, 128).parameters())
  assert reference == _vgg_count_formula(3, 64, 128)


def test_vgg_matches_torch_in_train_and_eval_mode():
  torch = pytest.importorskip('torch')
  torch.manual_seed(0)
  reference = _torch_vgg(3, 4, 128)
  _randomise_batchnorm(reference)
  before = _state(reference)
  x = np.random.default_rng(0).uniform(size=(3, 128, 128, 3)).astype(np.float32)
  variables = D.variables_from_torch(before)
  _assert_tree_close(jax.tree.map(jnp.shape, variables),
                     jax.tree.map(jnp.shape, _initial('vgg')), 0)

  # Training mode: batch statistics, running statistics updated with momentum 0.1 (torch).
  expected, expected_grads = _torch_train_step(reference, x)
  (_, (logits, new)), grads = _VGG_TRAIN(variables['params'], variables['batch_stats'], x)
  assert logits.shape == (3, 1) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
  _assert_grads_close(grads, expected_grads)
  updated = D.variables_from_torch(_state(reference))['batch_stats']
  _assert_tree_close(new, updated, atol=1e-5)
  # The update is not a no-op (so the comparison above can fail).
  assert not np.allclose(before['bn4_1.running_var'], updated['bn4_1']['var'], atol=1e-3)

  # Eval mode: running statistics, nothing changes.
  reference.eval()
  expected = reference(_to_nchw(x)).detach().numpy()
  variables = {'params': variables['params'], 'batch_stats': new}
  logits, unchanged = _VGG_EVAL(variables, x)
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
  _assert_tree_close(unchanged['batch_stats'], variables['batch_stats'], atol=0)


def test_batchnorm_running_stats_follow_torch_rule_and_are_global_when_sharded():
  x = np.random.default_rng(1).normal(2.0, 3.0, size=(8, 3, 5, 4)).astype(np.float32)
  bn = D.BatchNorm2d()
  variables = bn.init(RNG, x, train=False)
  apply = jax.jit(lambda v, x: bn.apply(v, x, train=True, mutable=['batch_stats']))
  mesh = jax.make_mesh((8,), ('data',), (jax.sharding.AxisType.Auto,))
  sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec('data')))
  mean = x.mean(axis=(0, 1, 2))
  for images in (x, sharded):
    y, new = apply(variables, images)
    # Normalised with the biased batch variance; running var gets the unbiased one (torch).
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5),
                               atol=1e-5)
    np.testing.assert_allclose(new['batch_stats']['mean'], 0.1 * mean, atol=1e-6)
    np.testing.assert_allclose(new['batch_stats']['var'],
                               0.9 + 0.1 * x.reshape(-1, 4).var(axis=0, ddof=1), rtol=1e-6)


def test_vgg_256_works_and_wrong_sizes_are_refused():
  module = D.VGGStyleDiscriminator(num_feat=2, input_size=256)
  variables = jax.eval_shape(lambda: D.init_discriminator(module, 256, RNG))
  assert 'bn5_1' in variables['batch_stats'] and 'conv5_1' in variables['params']
  assert variables['params']['linear1']['kernel'].shape == (16 * 16, 100)
  forward = lambda v, x: module.apply(v, x, train=True, mutable=['batch_stats'])
  images = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  logits, _ = jax.eval_shape(forward, variables, images(2, 256, 256, 3))
  assert logits.shape == (2, 1)
  with pytest.raises(ValueError, match=r'needs 256x256 images, got 64x64'):
    jax.eval_shape(forward, variables, images(1, 64, 64, 3))
  with pytest.raises(ValueError, match=r'input_size must be one of \(128, 256\).*got 192'):
    D.VGGStyleDiscriminator(input_size=192)
  with pytest.raises(ValueError, match=r'num_in_ch=3.*NHWC'):
    jax.eval_shape(forward, variables, images(1, 3, 256, 256))


# ----------------------------------------------------------------------------------------------
# Spectral norm and the U-Net discriminator.


def test_upsample_matches_torch_bilinear_and_jax_image_resize():
  x = np.random.default_rng(2).normal(size=(2, 5, 7, 3)).astype(np.float32)
  up = layers.bilinear_upsample(jnp.asarray(x), 2)
  assert up.shape == (2, 10, 14, 3)
  np.testing.assert_allclose(up, jax.image.resize(x, (2, 10, 14, 3), 'bilinear'), atol=1e-6)
  torch = pytest.importorskip('torch')
  expected = torch.nn.functional.interpolate(_to_nchw(x), scale_factor=2, mode='bilinear',
                                             align_corners=False).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(up, expected, atol=1e-6)


def _normalised_top_singular_value(kernel, stats) -> float:
  normalised = np.asarray(kernel / D.spectral_sigma(kernel, stats['u'], stats['v']))
  matrix = normalised.transpose(3, 2, 0, 1).reshape(normalised.shape[-1], -1)  # (cout, cin*k*k)
  return float(np.linalg.svd(matrix, compute_uv=False)[0])


def test_spectral_norm_converges_to_unit_norm_and_eval_keeps_state():
  conv = D.SNConv(8, kernel_size=3)
  x = jnp.ones((1, 6, 6, 5))
  variables = conv.init(RNG, x, train=False)
  kernel, stats = variables['params']['kernel'], variables['batch_stats']
  # Random initial vectors: sigma is a poor estimate, so this check can fail.
  assert abs(_normalised_top_singular_value(kernel, stats) - 1) > 1e-2
  step = jax.jit(lambda s: conv.apply({'params': variables['params'], 'batch_stats': s}, x,
                                      train=True, mutable=['batch_stats'])[1]['batch_stats'])
  for _ in range(100):
    stats = step(stats)
  assert abs(_normalised_top_singular_value(kernel, stats) - 1) < 1e-3
  evaluate = jax.jit(lambda s: conv.apply({'params': variables['params'], 'batch_stats': s}, x,
                                          train=False, mutable=['batch_stats'])[1])
  for s in (stats, variables['batch_stats']):
    _assert_tree_close(evaluate(s)['batch_stats'], s, atol=0)


def test_unet_full_size_parameter_count_and_output_shape():
  abstract = _abstract_variables(D.UNetDiscriminatorSN(), 64, 64)
  nf = 64
  convs = [3 * nf * 9 + nf, nf * 2 * nf * 16, 2 * nf * 4 * nf * 16, 4 * nf * 8 * nf * 16,
           8 * nf * 4 * nf * 9, 4 * nf * 2 * nf * 9, 2 * nf * nf * 9, nf * nf * 9, nf * nf * 9,
           nf * 9 + 1]  # conv0..conv9
  assert _count(abstract['params']) == sum(convs) == 4_376_897
  assert set(abstract['batch_stats']) == {f'conv{i}' for i in range(1, 9)}
  variables = _initial('unet_sn')
  (_, (logits, new)), _ = _UNET_TRAIN(variables['params'], variables['batch_stats'],
                                      jnp.ones(UNET_SHAPE))
  assert logits.shape == UNET_SHAPE[:3] + (1,) and logits.dtype == jnp.float32
  # Training mode stores a power iteration; eval mode leaves the vectors alone.
  assert not np.allclose(new['conv3']['u'], variables['batch_stats']['conv3']['u'])
  _, same = _UNET_EVAL(variables, jnp.ones(UNET_SHAPE))
  _assert_tree_close(same['batch_stats'], variables['batch_stats'], atol=0)
  with pytest.raises(ValueError, match=r'divisible by 8.*got 20x24'):
    UNET.apply(variables, jnp.ones((1, 20, 24, 3)), train=False)


def test_unet_matches_torch_in_train_and_eval_mode():
  torch = pytest.importorskip('torch')
  torch.manual_seed(1)
  reference = _torch_unet(3, 4)
  x = np.random.default_rng(3).uniform(size=UNET_SHAPE).astype(np.float32)
  variables = D.variables_from_torch(_state(reference))
  _assert_tree_close(jax.tree.map(jnp.shape, variables),
                     jax.tree.map(jnp.shape, _initial('unet_sn')), 0)

  # Training mode: one power iteration per spectral-norm conv, stored; gradients flow through
  # sigma with u and v held constant (as torch).
  expected, expected_grads = _torch_train_step(reference, x)
  (_, (logits, new)), grads = _UNET_TRAIN(variables['params'], variables['batch_stats'], x)
  np.testing.assert_allclose(logits, expected.transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
  _assert_grads_close(grads, expected_grads)
  updated = D.variables_from_torch(_state(reference))['batch_stats']
  _assert_tree_close(new, updated, atol=1e-5)

  # Eval mode: the stored u and v, no iteration.
  reference.eval()
  expected = reference(_to_nchw(x)).detach().numpy().transpose(0, 2, 3, 1)
  variables = {'params': variables['params'], 'batch_stats': new}
  logits, _ = _UNET_EVAL(variables, x)
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# Building, gradients, conversion errors.


@pytest.mark.parametrize('name', ['vgg', 'unet_sn'])
def test_finite_gradients(name):
  shape = (3, 128, 128, 3) if name == 'vgg' else UNET_SHAPE
  variables = _initial(name)
  step = _VGG_TRAIN if name == 'vgg' else _UNET_TRAIN
  x = np.random.default_rng(4).uniform(size=shape).astype(np.float32)
  _, grads = step(variables['params'], variables['batch_stats'], x)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert all(float(jnp.sum(jnp.abs(g))) > 0 for g in leaves)


def test_build_and_init_discriminator():
  vgg = D.build_discriminator('vgg', 4, 128, jnp.float32)
  assert vgg == VGG
  assert D.build_discriminator('unet_sn', 4, 999) == UNET  # input_size is VGG's only.
  assert set(_initial('vgg')) == set(_initial('unet_sn')) == {'params', 'batch_stats'}
  assert set(_initial('vgg')['batch_stats']['bn0_1']) == {'mean', 'var'}
  # Mixed precision: bfloat16 compute, float32 params, statistics and logits.
  for name, size in (('vgg', 128), ('unet_sn', 16)):
    module = D.build_discriminator(name, 4, 128, jnp.bfloat16)
    variables = jax.eval_shape(lambda: D.init_discriminator(module, size, RNG))
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.bfloat16)
    logits, new = jax.eval_shape(
        lambda v, x: module.apply(v, x, train=True, mutable=['batch_stats']), variables, x)
    assert {leaf.dtype for leaf in jax.tree.leaves((variables, logits, new))} == {np.dtype('float32')}
  with pytest.raises(ValueError, match=r"Unknown discriminator 'patchgan'.*'vgg', 'unet_sn'"):
    D.build_discriminator('patchgan', 64, 128, jnp.float32)
  with pytest.raises(ValueError, match=r"state_dict key 'fc.scale'"):
    D.variables_from_torch({'fc.scale': np.ones(3)})
