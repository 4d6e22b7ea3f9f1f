"""MESRGAN ("mobile ESRGAN"): RRDBNet with inverted-residual dense-block convs.

MESRGAN (Eriksson and Löf, "Lightweight Super-Resolution") keeps ESRGAN's generator but replaces the convolutions of its residual dense blocks
with MobileNetV2's bottleneck residual block (Sandler et al. 2018), with LeakyReLU instead of
ReLU6 and no batch norm. Here every dense-block conv `conv{k}` (cin -> cout) becomes an
`InvertedResidual` module of the same name:

  expand     1x1, cin -> expansion * cin, bias;  LeakyReLU(0.2)
  depthwise  3x3 depthwise, bias;                LeakyReLU(0.2)
  project    1x1, -> cout, bias, linear;         + the block input when cin == cout

Everything else is RRDBNet's (sr_jax.models.rrdbnet): names, the dense connections with their
LeakyReLU after conv1..4, the 0.2 residual scalings, the dense 3x3 trunk convs and the scales.
Parameter paths are RRDBNet's with conv{k}/kernel replaced by conv{k}/{expand,depthwise,project}.

Cost: its authors expected "half the multiplications" of the replaced convs. Per pixel a 3x3 conv
costs 9 * cin * cout multiplications and the block t * cin * (cin + 9 + cout); with t = 6 on the
ESRGAN widths (cin 64..192, growth 32) an RDB's five blocks cost 3.12x its five convs
(747,264 vs 239,616 per pixel); only t = 0.96, a contraction, would halve them.

Initialisation (the report publishes none): BasicSR's scheme applied to the block, He-normal
kernels and zero biases, with the 0.1 factor ESRGAN puts on its dense-block convs placed on the
linear `project` conv only, so a fresh block's output is about as small as the fresh conv's it
replaces (scaling all three layers would shrink it a thousandfold).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sr_jax.models.layers import Conv1x1, DepthwiseConv3x3
from sr_jax.models.rrdbnet import (LRELU_SLOPE, RDB_INIT_SCALE, ModuleDef, RRDBNet,
                                   scaled_he_normal)

Array = jax.Array
Dtype = Any

# Depthwise kernels: LoRA excludes them (a grouped conv has no useful low-rank form).
DEPTHWISE_KERNELS = r'.*/depthwise/kernel'

_FULL = dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, expansion=6)
PRESETS: dict[str, dict[str, Any]] = {
    # The MESRGAN report's generator: ESRGAN x4 widths with MobileNetV2's t = 6.
    'x4': dict(_FULL, scale=4),
    # Small x4 layouts for tests and CPU demos (same structure, fewer and narrower blocks).
    'small': dict(num_in_ch=3, num_out_ch=3, num_feat=32, num_block=4, num_grow_ch=16,
                  expansion=6, scale=4),
    'micro': dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_block=1, num_grow_ch=8,
                  expansion=6, scale=4),
}


class InvertedResidual(nn.Module):
  """MobileNetV2's bottleneck block with LeakyReLU(0.2): (N, H, W, cin) -> (N, H, W, features).

  1x1 expand to expansion * cin, 3x3 depthwise, linear 1x1 projection; adds the input when
  cin == features. `impl` picks the 1x1/depthwise formulations (layers.resolve_impl).
  """
  features: int
  expansion: int = 6
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the block; the output has `features` channels and the compute dtype."""
    cin = x.shape[-1]
    he = scaled_he_normal(1.0)
    kw = dict(dtype=self.dtype, impl=self.impl, bias_init=nn.initializers.zeros)
    y = Conv1x1(self.expansion * cin, kernel_init=he, name='expand', **kw)(x)
    y = nn.leaky_relu(y, LRELU_SLOPE)
    y = nn.leaky_relu(DepthwiseConv3x3(kernel_init=he, name='depthwise', **kw)(y), LRELU_SLOPE)
    y = Conv1x1(self.features, kernel_init=scaled_he_normal(RDB_INIT_SCALE), name='project',
                **kw)(y)
    return y + jnp.asarray(x, self.dtype) if cin == self.features else y


class MESRGAN(RRDBNet):
  """MESRGAN generator: RRDBNet (same fields, scales and names) plus `expansion` (t)."""
  expansion: int = 6

  def make_dense_conv(self) -> ModuleDef:
    """The dense-block conv replaced by an inverted-residual block."""
    if self.expansion < 1:
      raise ValueError(f'MESRGAN expansion must be a positive integer, got {self.expansion}.')
    return functools.partial(InvertedResidual, expansion=self.expansion, dtype=self.dtype,
                             impl=self.impl)
