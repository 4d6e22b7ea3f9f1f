"""RRDBNet, the ESRGAN generator (Wang et al. 2018), in BasicSR's layout, in Flax linen.

Inputs and outputs are NHWC; the output is not clamped. Submodules carry BasicSR's names, so a
BasicSR checkpoint key maps to one Flax path (PyTorch convs are OIHW, Flax HWIO):

  conv_first.weight               -> conv_first/kernel   (.bias -> conv_first/bias)
  body.{i}.rdb{j}.conv{k}.weight  -> body_{i}/rdb{j}/conv{k}/kernel
  conv_body, conv_up1, conv_up2, conv_hr, conv_last  -> the same names

The network: conv_first; `num_block` RRDBs (each three residual dense blocks, see below) and
conv_body, added to conv_first's output; then x2 nearest upsampling + conv_up1 + LeakyReLU(0.2)
twice; conv_hr + LeakyReLU(0.2); conv_last. A residual dense block (RDB) has five 3x3 convs
whose inputs are the block input concatenated with every earlier conv's output (LeakyReLU 0.2
after the first four); it returns x + 0.2 * conv5(...), and an RRDB returns x + 0.2 * rdb3(...).

Scales, as BasicSR: 4 is the ESRGAN layout; 2 and 1 first pixel-unshuffle the input by 2 and 4
(conv_first then takes 4x and 16x the channels) and keep the x4 upsampling, so their input sides
must be multiples of 2 and 4 (`size_multiple`). Scale 3 is NOT a BasicSR layout: sr_jax uses
one x3 nearest upsampling + conv_up1 + LeakyReLU and has no conv_up2.

Initialisation as BasicSR: the RDB convs use He-normal kernels (std sqrt(2 / fan_in)) scaled by
0.1 and zero biases, so each fresh RRDB starts close to the identity; the trunk convs keep
PyTorch's defaults. `make_dense_conv` is the hook MESRGAN (sr_jax.models.mesrgan) overrides to
swap the RDB convs for inverted-residual blocks.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from sr_jax.models.layers import Conv, pixel_unshuffle

Array = jax.Array
Dtype = Any
ModuleDef = Callable[..., nn.Module]  # (features, name=...) -> module mapping cin -> features.

SCALES = (1, 2, 3, 4)
# Input pixel-unshuffle factor per scale (BasicSR's trick for x2 and x1).
UNSHUFFLE = {1: 4, 2: 2, 3: 1, 4: 1}
# Regex over parameter paths matching no path: the dense nets have no depthwise kernels.
NO_DEPTHWISE_KERNELS = r'(?!)'
RDB_INIT_SCALE = 0.1
RESIDUAL_SCALE = 0.2
LRELU_SLOPE = 0.2

_FULL = dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32)
PRESETS: dict[str, dict[str, Any]] = {
    # ESRGAN's generator (RRDB_ESRGAN_x4 / BasicSR ESRGAN_x4): 16,697,987 params.
    'x4': dict(_FULL, scale=4),
    'x2': dict(_FULL, scale=2),  # BasicSR's x2 (Real-ESRGAN x2plus): input pixel-unshuffled.
    'x3': dict(_FULL, scale=3),  # sr_jax's x3 (one x3 nearest upsampling; no BasicSR weights).
    # Small x4 layouts for tests and CPU demos (same structure, fewer and narrower blocks).
    'small': dict(num_in_ch=3, num_out_ch=3, num_feat=32, num_block=4, num_grow_ch=16, scale=4),
    'micro': dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=1, num_grow_ch=8, scale=4),
}


def scaled_he_normal(scale: float) -> nn.initializers.Initializer:
  """BasicSR's `default_init_weights`: kaiming_normal_ (std sqrt(2 / fan_in)) times `scale`."""
  return nn.initializers.variance_scaling(2.0 * scale * scale, 'fan_in', 'normal')


def upsample_nearest(x: Array, factor: int) -> Array:
  """Nearest-neighbour upsampling of NHWC by an integer factor (F.interpolate 'nearest')."""
  if factor == 1:
    return x
  n, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c))
  return x.reshape(n, h * factor, w * factor, c)


def check_input(x: Array, model: str, channels: int, multiple: int, reason: str) -> None:
  """Raises a ValueError naming the problem and the fix for a wrongly shaped NHWC input."""
  if x.ndim != 4 or x.shape[-1] != channels:
    raise ValueError(f'{model} expects NHWC input with {channels} channels (num_in_ch), got '
                     f'shape {x.shape}.')
  if x.shape[1] % multiple or x.shape[2] % multiple:
    raise ValueError(f'{model} {reason}: input height and width must be multiples of '
                     f'{multiple} (model.size_multiple), got {x.shape[1]}x{x.shape[2]}. Pad or '
                     f'crop the image (or choose tiles that are multiples of {multiple}).')


class ResidualDenseBlock(nn.Module):
  """ESRGAN's residual dense block: five densely connected convs, x + 0.2 * conv5(...).

  `conv` builds each conv: conv(features, name='conv{k}') maps the concatenated features to
  `features` channels (a 3x3 Conv for ESRGAN, an inverted residual block for MESRGAN).
  """
  num_grow_ch: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the block to `x` (N, H, W, C); the output has the same shape."""
    features = [x]
    for k in range(1, 5):
      out = self.conv(self.num_grow_ch, name=f'conv{k}')(jnp.concatenate(features, axis=-1))
      features.append(nn.leaky_relu(out, LRELU_SLOPE))
    out = self.conv(x.shape[-1], name='conv5')(jnp.concatenate(features, axis=-1))
    return out * RESIDUAL_SCALE + x


class RRDB(nn.Module):
  """Residual-in-residual dense block: x + 0.2 * rdb3(rdb2(rdb1(x)))."""
  num_grow_ch: int
  conv: ModuleDef

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the block to `x` (N, H, W, C); the output has the same shape."""
    out = x
    for j in (1, 2, 3):
      out = ResidualDenseBlock(self.num_grow_ch, self.conv, name=f'rdb{j}')(out)
    return out * RESIDUAL_SCALE + x


class RRDBNet(nn.Module):
  """ESRGAN generator: NHWC float (N, H, W, num_in_ch) -> float32 (N, sH, sW, num_out_ch).

  Fields mirror BasicSR's constructor; `scale` is the upscaling factor (1, 2, 3 or 4). `dtype`
  is the compute dtype (params are float32); `impl` selects the conv formulation ('auto',
  'xla' or 'shifted'; see layers.resolve_impl).
  """
  num_in_ch: int = 3
  num_out_ch: int = 3
  scale: int = 4
  num_feat: int = 64
  num_block: int = 23
  num_grow_ch: int = 32
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @property
  def size_multiple(self) -> int:
    """Input height and width must be multiples of this (the pixel-unshuffle factor)."""
    return UNSHUFFLE.get(self.scale, 1)

  @property
  def input_channels(self) -> int:
    """Channels of the input image (num_in_ch)."""
    return self.num_in_ch

  def make_dense_conv(self) -> ModuleDef:
    """The RDB conv: 3x3 with BasicSR's init (He-normal x 0.1, zero bias)."""
    return functools.partial(Conv, kernel_size=3, padding=1, dtype=self.dtype, impl=self.impl,
                             kernel_init=scaled_he_normal(RDB_INIT_SCALE),
                             bias_init=nn.initializers.zeros)

  def _conv3(self, x: Array, features: int, name: str) -> Array:
    """A trunk 3x3 conv with PyTorch's default init."""
    return Conv(features, 3, padding=1, dtype=self.dtype, impl=self.impl, name=name)(x)

  def _check(self, x: Array) -> None:
    """Rejects unsupported scales and wrongly shaped inputs with the fix in the message."""
    if self.scale not in SCALES:
      raise ValueError(f'{type(self).__name__} supports scale {SCALES}, got scale={self.scale}.')
    check_input(x, type(self).__name__, self.num_in_ch, self.size_multiple,
                f'scale {self.scale} pixel-unshuffles its input by {self.size_multiple}')

  def _upsample(self, feat: Array) -> Array:
    """x4: two (nearest x2, conv_upK, LeakyReLU) stages; x3: one stage with nearest x3."""
    factors = (3,) if self.scale == 3 else (2, 2)
    for k, factor in enumerate(factors, start=1):
      feat = self._conv3(upsample_nearest(feat, factor), self.num_feat, f'conv_up{k}')
      feat = nn.leaky_relu(feat, LRELU_SLOPE)
    return feat

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Upscales `x` of shape (N, H, W, num_in_ch) by `scale`."""
    self._check(x)
    feat = pixel_unshuffle(jnp.asarray(x, jnp.float32), self.size_multiple)
    feat = self._conv3(feat, self.num_feat, 'conv_first')
    body = feat
    dense_conv = self.make_dense_conv()
    for i in range(self.num_block):
      body = RRDB(self.num_grow_ch, dense_conv, name=f'body_{i}')(body)
    feat = feat + self._conv3(body, self.num_feat, 'conv_body')
    feat = self._upsample(feat)
    feat = nn.leaky_relu(self._conv3(feat, self.num_feat, 'conv_hr'), LRELU_SLOPE)
    return self._conv3(feat, self.num_out_ch, 'conv_last').astype(jnp.float32)
