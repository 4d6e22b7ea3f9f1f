"""MSRResNet: BasicSR's SRResNet without batch norm, the SRGAN generator sr_jax uses, in Flax.

Inputs and outputs are NHWC; the output is not clamped. Submodules carry BasicSR's names
(srresnet_arch.py), so a BasicSR checkpoint key maps to one Flax path (OIHW -> HWIO):

  conv_first.weight          -> conv_first/kernel   (.bias -> conv_first/bias)
  body.{i}.conv{k}.weight    -> body_{i}/conv{k}/kernel   (k = 1, 2)
  upconv1, upconv2, conv_hr, conv_last  -> the same names

The network: conv_first + LeakyReLU(0.1); `num_block` residual blocks x + conv2(relu(conv1(x)))
(no BN, unlike the SRGAN paper's PReLU/BN blocks); upsampling by sub-pixel convolution: for
x4 twice (upconv 64 -> 256, PixelShuffle(2), LeakyReLU(0.1)), for x2/x3 once (upconv1
64 -> 64*s*s, PixelShuffle(s), LeakyReLU(0.1)); conv_hr + LeakyReLU(0.1); conv_last; plus the
input upsampled bilinearly (PyTorch's align_corners=False) as a global residual.

Initialisation as BasicSR: every conv (not only the residual blocks') has a He-normal kernel
(std sqrt(2 / fan_in)) scaled by 0.1 and a zero bias.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sr_jax.models.layers import Conv, bilinear_upsample, pixel_shuffle
from sr_jax.models.rrdbnet import check_input, scaled_he_normal

Array = jax.Array
Dtype = Any

SCALES = (2, 3, 4)
# Regex over parameter paths matching no path: MSRResNet has no depthwise kernels.
NO_DEPTHWISE_KERNELS = r'(?!)'
INIT_SCALE = 0.1
LRELU_SLOPE = 0.1

_FULL = dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16)
PRESETS: dict[str, dict[str, Any]] = {
    # BasicSR's MSRResNet_x4 (the SRResNet/SRGAN generator without BN): 1,517,571 params.
    'x4': dict(_FULL, scale=4),
    'x2': dict(_FULL, scale=2),
    'x3': dict(_FULL, scale=3),
    # Small x4 layouts for tests and CPU demos (same structure, fewer and narrower blocks).
    'small': dict(num_in_ch=3, num_out_ch=3, num_feat=32, num_block=4, scale=4),
    'micro': dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=1, scale=4),
}


class ResidualBlockNoBN(nn.Module):
  """x + conv2(relu(conv1(x))), both 3x3 convs C -> C with BasicSR's 0.1-scaled init."""
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the block to `x` (N, H, W, C); the output has the same shape."""
    conv = lambda name: _conv3(x.shape[-1], self.dtype, self.impl, name)
    return x + conv('conv2')(nn.relu(conv('conv1')(x)))


def _conv3(features: int, dtype: Dtype, impl: str, name: str) -> Conv:
  """A 3x3 conv with BasicSR's init (He-normal x 0.1, zero bias)."""
  return Conv(features, 3, padding=1, dtype=dtype, impl=impl, name=name,
              kernel_init=scaled_he_normal(INIT_SCALE), bias_init=nn.initializers.zeros)


class MSRResNet(nn.Module):
  """MSRResNet: NHWC float (N, H, W, num_in_ch) -> float32 (N, sH, sW, num_out_ch).

  Fields mirror BasicSR's constructor (`scale` is its `upscale`: 2, 3 or 4). `dtype` is the
  compute dtype (params are float32); `impl` selects the conv formulation ('auto', 'xla' or
  'shifted'; see layers.resolve_impl).
  """
  num_in_ch: int = 3
  num_out_ch: int = 3
  num_feat: int = 64
  num_block: int = 16
  scale: int = 4
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @property
  def size_multiple(self) -> int:
    """Any input size works."""
    return 1

  @property
  def input_channels(self) -> int:
    """Channels of the input image (num_in_ch)."""
    return self.num_in_ch

  def _conv_act(self, x: Array, features: int, name: str, shuffle: int = 1) -> Array:
    """conv (-> PixelShuffle) -> LeakyReLU(0.1)."""
    y = _conv3(features, self.dtype, self.impl, name)(x)
    return nn.leaky_relu(pixel_shuffle(y, shuffle) if shuffle > 1 else y, LRELU_SLOPE)

  def _upsample(self, feat: Array) -> Array:
    """Sub-pixel upsampling: x4 as two x2 stages (upconv1, upconv2), x2/x3 in one (upconv1)."""
    stages = (2, 2) if self.scale == 4 else (self.scale,)
    for k, factor in enumerate(stages, start=1):
      feat = self._conv_act(feat, self.num_feat * factor * factor, f'upconv{k}', factor)
    return feat

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Upscales `x` of shape (N, H, W, num_in_ch) by `scale`."""
    if self.scale not in SCALES:
      raise ValueError(f'MSRResNet supports scale {SCALES}, got scale={self.scale}.')
    if self.num_in_ch != self.num_out_ch:
      raise ValueError(f'MSRResNet adds the upsampled input to its output: num_in_ch '
                       f'{self.num_in_ch} must equal num_out_ch {self.num_out_ch}.')
    check_input(x, 'MSRResNet', self.num_in_ch, 1, '')
    x = jnp.asarray(x, jnp.float32)
    feat = self._conv_act(x, self.num_feat, 'conv_first')
    for i in range(self.num_block):
      feat = ResidualBlockNoBN(self.dtype, self.impl, name=f'body_{i}')(feat)
    feat = self._conv_act(self._upsample(feat), self.num_feat, 'conv_hr')
    out = _conv3(self.num_out_ch, self.dtype, self.impl, 'conv_last')(feat)
    return out.astype(jnp.float32) + bilinear_upsample(x, self.scale)
