"""NAFNet (Chen et al. 2022), faithful to megvii-research's NAFNet_arch.py, in Flax linen.

Inputs and outputs are NHWC. Every submodule is named explicitly so that an official PyTorch
checkpoint key maps to a Flax param path mechanically (PyTorch convs are OIHW, Flax HWIO):

  intro.weight                  -> intro/kernel
  encoders.{s}.{b}.conv2.weight -> encoders_{s}_{b}/conv2/kernel   (depthwise: (3, 3, 1, C))
  encoders.{s}.{b}.sca.1.bias   -> encoders_{s}_{b}/sca/bias
  encoders.{s}.{b}.norm1.weight -> encoders_{s}_{b}/norm1/scale    (.bias -> /bias)
  encoders.{s}.{b}.beta         -> encoders_{s}_{b}/beta           ((1, C, 1, 1) -> (C,))
  downs.{s}.weight              -> downs_{s}/kernel
  middle_blks.{b}.*             -> middle_blks_{b}/*
  ups.{s}.0.weight              -> ups_{s}/kernel                  (1x1, no bias)
  decoders.{s}.{b}.*            -> decoders_{s}_{b}/*
  ending.weight                 -> ending/kernel

Convolutions come from `layers`, whose `impl` picks the fastest numerically identical
formulation per platform (shifted sums / matmuls on CPU, XLA convs on accelerators).
Dropout is omitted: every released configuration uses rate 0.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sr_jax.models import tlc
from sr_jax.models.layers import Conv, Conv1x1, DepthwiseConv3x3, LayerNorm2d, pixel_shuffle

Array = jax.Array
Dtype = Any

# Depthwise kernels: LoRA excludes them (a grouped conv has no useful low-rank form).
DEPTHWISE_KERNELS = r'.*/conv2/kernel'

PRESETS: dict[str, dict[str, Any]] = {
    # Official configurations (params: 29.16M, 115.98M, 17.11M, 67.89M).
    'sidd_w32': dict(width=32, enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12,
                     dec_blk_nums=(2, 2, 2, 2)),
    'sidd_w64': dict(width=64, enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12,
                     dec_blk_nums=(2, 2, 2, 2)),
    'gopro_w32': dict(width=32, enc_blk_nums=(1, 1, 1, 28), middle_blk_num=1,
                      dec_blk_nums=(1, 1, 1, 1)),
    'gopro_w64': dict(width=64, enc_blk_nums=(1, 1, 1, 28), middle_blk_num=1,
                      dec_blk_nums=(1, 1, 1, 1)),
    # Small layouts for tests and CPU demos.
    'tiny': dict(width=16, enc_blk_nums=(1, 1, 1), middle_blk_num=1, dec_blk_nums=(1, 1, 1)),
    'micro': dict(width=8, enc_blk_nums=(1, 1), middle_blk_num=1, dec_blk_nums=(1, 1)),
}


def simple_gate(x: Array) -> Array:
  """NAFNet's SimpleGate: splits the channels into two halves and multiplies them."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x1 * x2


class NAFBlock(nn.Module):
  """One NAFNet block on NHWC input with C channels (inferred from the input).

  y = inp + beta * conv3(sca(gate(dw(conv1(norm1(inp))))));
  out = y + gamma * conv5(gate(conv4(norm2(y)))).
  beta and gamma start at zero, so a fresh block is the identity. `pool_window` > 0 makes the
  channel attention's pooling local (TLC, see sr_jax.models.tlc); 0 pools globally, as trained.
  """
  dtype: Dtype = jnp.float32
  impl: str = 'auto'
  pool_window: int = 0

  def _channel_attention(self, x: Array) -> Array:
    """Simplified channel attention: average pool (global, or TLC's local) -> 1x1 conv -> x *."""
    pooled = tlc.local_mean(x, self.pool_window).astype(self.dtype)
    weights = Conv1x1(x.shape[-1], dtype=self.dtype, impl=self.impl, name='sca')(pooled)
    return x * weights

  @nn.compact
  def __call__(self, inp: Array) -> Array:
    """Applies the block; the output has the input's shape and the compute dtype."""
    c = inp.shape[-1]
    conv = lambda f, name: Conv1x1(f, dtype=self.dtype, impl=self.impl, name=name)
    beta = self.param('beta', nn.initializers.zeros, (c,), jnp.float32)
    gamma = self.param('gamma', nn.initializers.zeros, (c,), jnp.float32)
    inp = jnp.asarray(inp, self.dtype)

    x = LayerNorm2d(dtype=self.dtype, name='norm1')(inp)
    x = conv(2 * c, 'conv1')(x)
    x = DepthwiseConv3x3(dtype=self.dtype, impl=self.impl, name='conv2')(x)
    x = self._channel_attention(simple_gate(x))
    x = conv(c, 'conv3')(x)
    y = inp + x * jnp.asarray(beta, self.dtype)

    x = LayerNorm2d(dtype=self.dtype, name='norm2')(y)
    x = conv(2 * c, 'conv4')(x)
    x = conv(c, 'conv5')(simple_gate(x))
    return y + x * jnp.asarray(gamma, self.dtype)


def _blocks(x: Array, count: int, prefix: str, dtype: Dtype, impl: str,
            pool_window: int = 0) -> Array:
  """Applies `count` NAFBlocks named f'{prefix}_{b}' (called inside a compact method)."""
  for b in range(count):
    x = NAFBlock(dtype=dtype, impl=impl, pool_window=pool_window, name=f'{prefix}_{b}')(x)
  return x


def pad_to_multiple(x: Array, multiple: int) -> Array:
  """Zero-pads an NHWC image on the bottom/right to a multiple of `multiple` (as the official
  check_image_size does with F.pad)."""
  pad_h = -x.shape[1] % multiple
  pad_w = -x.shape[2] % multiple
  if pad_h == 0 and pad_w == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


class NAFNet(nn.Module):
  """NAFNet image restoration network: NHWC float input -> float32 output of the same shape.

  Fields mirror the official constructor. `dtype` is the compute dtype (params are float32);
  `impl` selects the conv formulation ('auto', 'xla' or 'shifted'; see layers.resolve_impl).
  `tlc_window` > 0 converts the model for large test images (TLC, sr_jax.models.tlc): the
  channel attention averages over windows of that many input pixels (tlc.window_for(training
  crop size)) instead of the whole map; 0, the default, is the trained model. It changes no
  parameter.
  """
  img_channel: int = 3
  width: int = 32
  middle_blk_num: int = 12
  enc_blk_nums: Sequence[int] = (2, 2, 4, 8)
  dec_blk_nums: Sequence[int] = (2, 2, 2, 2)
  dtype: Dtype = jnp.float32
  impl: str = 'auto'
  tlc_window: int = 0

  @property
  def size_multiple(self) -> int:
    """Input sides are padded to multiples of this (tiles should be multiples of it)."""
    return 2 ** len(self.enc_blk_nums)

  @property
  def input_channels(self) -> int:
    return self.img_channel

  @nn.compact
  def __call__(self, inp: Array) -> Array:
    """Restores `inp` of shape (N, H, W, img_channel); any H, W (padded internally)."""
    if len(self.enc_blk_nums) != len(self.dec_blk_nums):
      raise ValueError('enc_blk_nums and dec_blk_nums must have the same length.')
    height, width = inp.shape[1], inp.shape[2]
    inp = pad_to_multiple(jnp.asarray(inp, jnp.float32), self.size_multiple)
    kw = dict(dtype=self.dtype, impl=self.impl)
    levels = len(self.enc_blk_nums)
    window = lambda level: tlc.level_window(self.tlc_window, level)

    x = Conv(self.width, 3, padding=1, name='intro', **kw)(inp)
    skips = []
    for s, num in enumerate(self.enc_blk_nums):
      x = _blocks(x, num, f'encoders_{s}', pool_window=window(s), **kw)
      skips.append(x)
      x = Conv(2 * x.shape[-1], 2, strides=2, padding=0, name=f'downs_{s}', **kw)(x)
    x = _blocks(x, self.middle_blk_num, 'middle_blks', pool_window=window(levels), **kw)
    for s, num in enumerate(self.dec_blk_nums):
      x = Conv1x1(2 * x.shape[-1], use_bias=False, name=f'ups_{s}', **kw)(x)
      x = pixel_shuffle(x, 2) + skips[-1 - s]
      x = _blocks(x, num, f'decoders_{s}', pool_window=window(levels - 1 - s), **kw)
    x = Conv(self.img_channel, 3, padding=1, name='ending', **kw)(x)
    out = x.astype(jnp.float32) + inp
    return out[:, :height, :width, :]


_STAGES = ('intro', 'encoders', 'downs', 'middle_blks', 'ups', 'decoders', 'ending')


def block_order(block: str) -> tuple:
  """Sort key putting NAFNet's top-level blocks in data-flow order.

  intro, encoders_0_*, downs_0, encoders_1_*, downs_1, ..., middle_blks_*, ups_0,
  decoders_0_*, ups_1, decoders_1_*, ..., ending: encoder level i runs before downs_i, and
  decoder level i after ups_i (ups_0 is the deepest, right after the middle blocks). Unknown
  names go last.
  """
  stage = next((s for s in _STAGES if block == s or block.startswith(s + '_')), None)
  numbers = tuple(int(n) for n in block[len(stage or ''):].split('_') if n.isdigit())
  level = numbers[0] if numbers else 0
  if stage in ('encoders', 'downs'):
    return (1, level, 0 if stage == 'encoders' else 1, numbers)
  if stage in ('ups', 'decoders'):
    return (3, level, 0 if stage == 'ups' else 1, numbers)
  rank = {'intro': 0, 'middle_blks': 2, 'ending': 4}.get(stage, 5)
  return (rank, 0, 0, numbers, block)
