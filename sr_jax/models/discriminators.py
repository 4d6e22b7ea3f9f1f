"""GAN discriminators for super-resolution, faithful to BasicSR's discriminator_arch.py.

Two networks, both called as `module.apply(variables, x, train=..., mutable=[...])` on NHWC
images (the generator's output range, e.g. [0, 1]) and returning float32 raw logits:

  'vgg'      VGGStyleDiscriminator (ESRGAN, SRGAN): strided convs with BatchNorm down to 4x4,
             then two linear layers; one logit per image, shape (N, 1). Input 128 or 256.
  'unet_sn'  UNetDiscriminatorSN (Real-ESRGAN): a U-Net of spectrally normalised convs; one
             logit per pixel, shape (N, H, W, 1). Any H, W divisible by 8.

Variables. 'params' holds the weights (float32). 'batch_stats' holds the state that is not
learned by gradient: BatchNorm running `mean` / `var`, and each spectral-norm conv's power
iteration vectors `u` / `v`. With `train=True` pass `mutable=['batch_stats']`: BatchNorm then
normalises with the batch's statistics and updates the running ones, and every spectral-norm
conv does one power iteration and stores it. With `train=False` nothing changes: BatchNorm
uses the running statistics, spectral norm the stored vectors. This is torch's train()/eval().

Both layers are written here rather than taken from flax, to reproduce torch exactly (the tests
compare each with PyTorch):
  * flax's nn.BatchNorm updates the running variance with the biased batch variance; torch's
    BatchNorm2d uses the unbiased one (x n / (n - 1)). `BatchNorm2d` below uses torch's rule
    and flax's variable names (scale, bias, mean, var).
  * flax's nn.SpectralNorm also runs a power iteration in eval mode (from the stored u, without
    storing it), so a converted Real-ESRGAN discriminator would not give torch's eval output;
    it also keys its state 'conv1/kernel/u' under a wrapper module. `SNConv` keeps torch's
    semantics: eval computes sigma = u . (W v) from the stored u and v.
Under jit with the batch sharded over devices, the batch means in `BatchNorm2d` are global
means (XLA inserts the cross-device reduction), so no `axis_name` is needed; only inside
shard_map / pmap would they be per-device.

Submodules carry BasicSR's attribute names, so a BasicSR state_dict maps key by key
(`variables_from_torch`; PyTorch convs are OIHW, Flax HWIO):

  conv0_0.weight / .bias        -> params/conv0_0/kernel, /bias
  bn0_1.weight / .bias          -> params/bn0_1/scale, /bias
  bn0_1.running_mean / _var     -> batch_stats/bn0_1/mean, /var   (num_batches_tracked unused)
  linear1.weight (100, C*4*4)   -> params/linear1/kernel (C*4*4, 100), transposed
  conv1.weight_orig             -> params/conv1/kernel            (spectral-norm convs)
  conv1.weight_u / .weight_v    -> batch_stats/conv1/u (cout,), /v (kh, kw, cin)

The VGG discriminator flattens its final 4x4xC features in PyTorch's NCHW order (channel, then
row, then column), so linear1's weight from a BasicSR checkpoint keeps its meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sr_jax.models.layers import Conv, bilinear_upsample, torch_bias_init, torch_kernel_init

Array = jax.Array
Dtype = Any

DISCRIMINATORS = ('vgg', 'unet_sn')
VGG_INPUT_SIZES = (128, 256)
UNET_SIZE_MULTIPLE = 8  # Three stride-2 convs, mirrored by three x2 upsamplings.
LRELU_SLOPE = 0.2
_DIMS = ('NHWC', 'HWIO', 'NHWC')
_HIGHEST = lax.Precision.HIGHEST


def leaky_relu(x: Array) -> Array:
  """LeakyReLU with BasicSR's negative slope 0.2."""
  return nn.leaky_relu(x, LRELU_SLOPE)


def _check_images(x: Array, channels: int, who: str) -> None:
  """Raises a ValueError unless `x` is an NHWC batch with `channels` channels."""
  if x.ndim != 4:
    raise ValueError(f'{who} takes NHWC images (N, H, W, C); got shape {x.shape}.')
  if x.shape[-1] != channels:
    raise ValueError(f'{who} was built for num_in_ch={channels} channels but the images have '
                     f'{x.shape[-1]} (shape {x.shape}); set num_in_ch or check the layout is NHWC.')


# ----------------------------------------------------------------------------------------------
# Layers.


class BatchNorm2d(nn.Module):
  """BatchNorm over (N, H, W) of an NHWC tensor with torch.nn.BatchNorm2d's semantics.

  train=True normalises with the batch mean and biased variance and (outside init) updates
  running = momentum * running + (1 - momentum) * batch, the variance term being the UNBIASED
  batch variance as in torch. `momentum` follows flax's convention: 0.9 here is torch's 0.1.
  train=False normalises with the running statistics. Statistics are float32 whatever `dtype`.
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """Normalises `x` of shape (N, H, W, C) per channel."""
    c = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    x32 = jnp.asarray(x, jnp.float32)
    if train:
      mean = jnp.mean(x32, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x32 - mean), axis=(0, 1, 2))
      if not self.is_initializing():
        n = x.size // c
        unbiased = var * (n / max(n - 1, 1))
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
    else:
      mean, var = running_mean.value, running_var.value
    mult = lax.rsqrt(var + self.epsilon) * jnp.asarray(scale, jnp.float32)
    y = (x32 - mean) * mult + jnp.asarray(bias, jnp.float32)
    return y.astype(self.dtype)


def _l2_normalise(x: Array, eps: float) -> Array:
  """x / max(||x||, eps), as torch.nn.functional.normalize (over all of x)."""
  return x / jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(x))), eps)


def power_iteration(kernel: Array, u: Array, eps: float = 1e-12) -> tuple[Array, Array]:
  """One power iteration of torch's spectral_norm on an HWIO kernel; returns (u, v).

  The matrix is torch's W = weight.reshape(cout, -1): u has shape (cout,), v the kernel's
  input side (kh, kw, cin). v = normalise(W^T u), then u = normalise(W v). No gradient flows
  through the vectors (torch computes them under no_grad).
  """
  kernel = jnp.asarray(kernel, jnp.float32)
  v = _l2_normalise(jnp.tensordot(kernel, u, axes=([3], [0]), precision=_HIGHEST), eps)
  u = _l2_normalise(jnp.tensordot(kernel, v, axes=([0, 1, 2], [0, 1, 2]), precision=_HIGHEST),
                    eps)
  return lax.stop_gradient(u), lax.stop_gradient(v)


def spectral_sigma(kernel: Array, u: Array, v: Array) -> Array:
  """The spectral-norm estimate sigma = u . (W v), differentiable w.r.t. the kernel."""
  wv = jnp.tensordot(jnp.asarray(kernel, jnp.float32), v, axes=([0, 1, 2], [0, 1, 2]),
                     precision=_HIGHEST)
  return jnp.dot(u, wv, precision=_HIGHEST)


class SNConv(nn.Module):
  """A conv whose kernel is divided by its largest singular value (torch's spectral_norm).

  params: `kernel` (kh, kw, cin, cout) is the un-normalised weight (torch's weight_orig), plus
  `bias` if use_bias. batch_stats: `u` (cout,) and `v` (kh, kw, cin), initialised as unit
  normal vectors. train=True does one power iteration (stored outside init) and normalises by
  the new sigma; train=False uses the stored vectors unchanged. Before any training call the
  stored vectors are random, so eval-mode sigma is then a rough estimate (as in torch).
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  padding: int = 1
  use_bias: bool = False
  eps: float = 1e-12
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """Applies the spectrally normalised conv to `x` of shape (N, H, W, cin)."""
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', torch_kernel_init, (k, k, cin, self.features), self.param_dtype)
    unit = lambda shape: _l2_normalise(jax.random.normal(self.make_rng('params'), shape), self.eps)
    u_var = self.variable('batch_stats', 'u', unit, (self.features,))
    v_var = self.variable('batch_stats', 'v', unit, (k, k, cin))
    u, v = u_var.value, v_var.value
    if train:
      u, v = power_iteration(kernel, u, self.eps)
      if not self.is_initializing():
        u_var.value, v_var.value = u, v
    normalised = kernel / spectral_sigma(kernel, u, v)
    y = lax.conv_general_dilated(jnp.asarray(x, self.dtype), jnp.asarray(normalised, self.dtype),
                                 (self.strides, self.strides), [(self.padding, self.padding)] * 2,
                                 dimension_numbers=_DIMS)
    if self.use_bias:
      bias = self.param('bias', torch_bias_init(k * k * cin), (self.features,), self.param_dtype)
      y = y + jnp.asarray(bias, self.dtype)
    return y


# ----------------------------------------------------------------------------------------------
# Networks.


class VGGStyleDiscriminator(nn.Module):
  """ESRGAN's VGG-style discriminator: NHWC (N, S, S, num_in_ch) -> float32 logits (N, 1).

  conv0_0 (3x3, bias) + LReLU; conv0_1 (4x4 stride 2) + bn0_1 + LReLU; then stages k = 1..4
  (and 5 when input_size is 256) of convk_0 (3x3) + bnk_0 + LReLU, convk_1 (4x4 stride 2) +
  bnk_1 + LReLU, with num_feat x (2, 4, 8, 8, 8) channels; the 4x4 result is flattened in
  NCHW order -> linear1 (100) -> LReLU -> linear2 (1). Convs after conv0_0 have no bias
  (BatchNorm follows). With num_feat=64: 14,499,401 params for input 128, 21,055,049 for 256.
  """
  num_in_ch: int = 3
  num_feat: int = 64
  input_size: int = 128
  dtype: Dtype = jnp.float32

  def __post_init__(self) -> None:
    """Refuses input sizes other than BasicSR's 128 and 256."""
    if self.input_size not in VGG_INPUT_SIZES:
      raise ValueError(f'VGGStyleDiscriminator input_size must be one of {VGG_INPUT_SIZES} '
                       f'(its linear1 expects a 4x4 map after 5 or 6 halvings); got '
                       f'{self.input_size}. Crop the GT patches to 128 or 256, or use unet_sn.')
    super().__post_init__()

  def stage_channels(self) -> list[int]:
    """Output channels of stages 0.. (stage 5 only for input 256)."""
    nf = self.num_feat
    channels = [nf, 2 * nf, 4 * nf, 8 * nf, 8 * nf]
    return channels + [8 * nf] if self.input_size == 256 else channels

  def _conv_bn(self, x: Array, features: int, kernel: int, stride: int, tag: str,
               train: bool) -> Array:
    """conv{tag} (no bias) -> bn{tag} -> LeakyReLU."""
    x = Conv(features, kernel, stride, padding=1, use_bias=False, dtype=self.dtype,
             name=f'conv{tag}')(x)
    return leaky_relu(BatchNorm2d(dtype=self.dtype, name=f'bn{tag}')(x, train))

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """Logits (N, 1) for NHWC images of exactly input_size x input_size pixels."""
    _check_images(x, self.num_in_ch, 'VGGStyleDiscriminator')
    if x.shape[1:3] != (self.input_size, self.input_size):
      raise ValueError(f'VGGStyleDiscriminator(input_size={self.input_size}) needs '
                       f'{self.input_size}x{self.input_size} images, got {x.shape[1]}x'
                       f'{x.shape[2]}; crop the patches to input_size or build it for this '
                       f'size (128 or 256).')
    channels = self.stage_channels()
    x = jnp.asarray(x, self.dtype)
    feat = leaky_relu(Conv(channels[0], 3, 1, padding=1, dtype=self.dtype, name='conv0_0')(x))
    feat = self._conv_bn(feat, channels[0], 4, 2, '0_1', train)
    for stage, features in enumerate(channels[1:], start=1):
      feat = self._conv_bn(feat, features, 3, 1, f'{stage}_0', train)
      feat = self._conv_bn(feat, features, 4, 2, f'{stage}_1', train)
    # NCHW flattening, as torch's feat.view(N, -1), so converted linear1 weights line up.
    feat = feat.transpose(0, 3, 1, 2).reshape(feat.shape[0], -1)
    dense = lambda n, fan_in, name: nn.Dense(n, dtype=self.dtype, kernel_init=torch_kernel_init,
                                             bias_init=torch_bias_init(fan_in), name=name)
    feat = leaky_relu(dense(100, feat.shape[-1], 'linear1')(feat))
    return dense(1, 100, 'linear2')(feat).astype(jnp.float32)


class UNetDiscriminatorSN(nn.Module):
  """Real-ESRGAN's U-Net discriminator: NHWC (N, H, W, num_in_ch) -> float32 logits (N, H, W, 1).

  conv0 (3x3, bias, no SN); conv1..conv3 (4x4 stride 2, SN) to num_feat x (2, 4, 8) channels;
  decoder: x2 bilinear upsampling then conv4..conv6 (3x3, SN) back to num_feat x (4, 2, 1),
  each added to the encoder feature of its resolution when skip_connection; conv7, conv8 (3x3,
  SN) and conv9 (3x3, bias, no SN) to one channel. LeakyReLU 0.2 after every conv but conv9.
  H and W must be multiples of 8. With num_feat=64: 4,376,897 params.
  """
  num_in_ch: int = 3
  num_feat: int = 64
  skip_connection: bool = True
  dtype: Dtype = jnp.float32

  def _sn(self, x: Array, features: int, kernel: int, stride: int, name: str,
          train: bool) -> Array:
    """Spectral-norm conv (no bias, padding 1) followed by LeakyReLU."""
    conv = SNConv(features, kernel, stride, padding=1, dtype=self.dtype, name=name)
    return leaky_relu(conv(x, train))

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """Per-pixel logits for NHWC images whose sides are multiples of 8."""
    _check_images(x, self.num_in_ch, 'UNetDiscriminatorSN')
    if x.shape[1] % UNET_SIZE_MULTIPLE or x.shape[2] % UNET_SIZE_MULTIPLE:
      raise ValueError(f'UNetDiscriminatorSN needs height and width divisible by '
                       f'{UNET_SIZE_MULTIPLE} (three stride-2 convs), got {x.shape[1]}x'
                       f'{x.shape[2]}; crop the patches to a multiple of {UNET_SIZE_MULTIPLE}.')
    nf = self.num_feat
    x = jnp.asarray(x, self.dtype)
    x0 = leaky_relu(Conv(nf, 3, 1, padding=1, dtype=self.dtype, name='conv0')(x))
    x1 = self._sn(x0, 2 * nf, 4, 2, 'conv1', train)
    x2 = self._sn(x1, 4 * nf, 4, 2, 'conv2', train)
    x3 = self._sn(x2, 8 * nf, 4, 2, 'conv3', train)
    up = x3
    for name, features, skip in (('conv4', 4 * nf, x2), ('conv5', 2 * nf, x1),
                                 ('conv6', nf, x0)):
      up = self._sn(bilinear_upsample(up, 2), features, 3, 1, name, train)
      if self.skip_connection:
        up = up + skip
    out = self._sn(up, nf, 3, 1, 'conv7', train)
    out = self._sn(out, nf, 3, 1, 'conv8', train)
    out = Conv(1, 3, 1, padding=1, dtype=self.dtype, name='conv9')(out)
    return out.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# Building, initialising, converting.


def build_discriminator(name: str, num_feat: int = 64, input_size: int = 128,
                        dtype: Dtype = jnp.float32, num_in_ch: int = 3) -> nn.Module:
  """The discriminator called `name` ('vgg' or 'unet_sn'; config.gan.discriminator).

  `input_size` is the VGG discriminator's fixed image size (128 or 256, the GT crop size); the
  U-Net takes any multiple of 8 and ignores it.
  """
  if name == 'vgg':
    return VGGStyleDiscriminator(num_in_ch=num_in_ch, num_feat=num_feat, input_size=input_size,
                                 dtype=dtype)
  if name == 'unet_sn':
    return UNetDiscriminatorSN(num_in_ch=num_in_ch, num_feat=num_feat, dtype=dtype)
  raise ValueError(f'Unknown discriminator {name!r}; available: {list(DISCRIMINATORS)}.')


def init_discriminator(module: nn.Module, size: int | Sequence[int],
                       rng: Array) -> dict[str, Any]:
  """Variables {'params', 'batch_stats'} of `module` for square `size` or (height, width)."""
  height, width = (size, size) if isinstance(size, int) else tuple(size)
  x = jnp.zeros((1, height, width, module.num_in_ch), jnp.float32)
  variables = jax.jit(lambda key, images: module.init(key, images, train=False))(rng, x)
  return {'params': variables['params'], 'batch_stats': variables['batch_stats']}


def _convert_entry(key: str, value: np.ndarray,
                   state: Mapping[str, Any]) -> tuple[str, str, np.ndarray]:
  """(collection, 'module/variable', array) for one BasicSR state_dict entry."""
  module, _, leaf = key.rpartition('.')
  if leaf in ('weight', 'weight_orig') and value.ndim == 4:
    return 'params', f'{module}/kernel', value.transpose(2, 3, 1, 0)
  if leaf == 'weight' and value.ndim == 2:
    return 'params', f'{module}/kernel', value.T
  if leaf == 'weight' and value.ndim == 1:
    return 'params', f'{module}/scale', value
  if leaf == 'bias':
    return 'params', f'{module}/bias', value
  if leaf in ('running_mean', 'running_var'):
    return 'batch_stats', f'{module}/{leaf[8:]}', value
  if leaf == 'weight_u':
    return 'batch_stats', f'{module}/u', value
  if leaf == 'weight_v':
    _, cin, kh, kw = np.shape(state[f'{module}.weight_orig'])
    return 'batch_stats', f'{module}/v', value.reshape(cin, kh, kw).transpose(1, 2, 0)
  raise ValueError(f'Cannot convert state_dict key {key!r} of shape {value.shape}: not a '
                   f'BasicSR VGGStyleDiscriminator / UNetDiscriminatorSN entry.')


def variables_from_torch(state: Mapping[str, Any]) -> dict[str, Any]:
  """Flax variables {'params', 'batch_stats'} from a BasicSR discriminator state_dict.

  `state` maps torch keys to arrays (numpy or torch tensors; a Real-ESRGAN net_d .pth holds it
  under 'params'). The key mapping is in the module docstring. The caller should compare the
  result's shapes with `init_discriminator`'s for the architecture it expects.
  """
  out: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for key, value in state.items():
    if key.endswith('num_batches_tracked'):
      continue  # torch uses it only when momentum=None (cumulative averaging).
    collection, path, array = _convert_entry(key, np.asarray(value, np.float32), state)
    module, name = path.split('/')
    out[collection].setdefault(module, {})[name] = jnp.asarray(np.ascontiguousarray(array))
  return out
