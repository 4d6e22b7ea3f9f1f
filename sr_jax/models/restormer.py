"""Restormer (Zamir et al. 2022), faithful to swz30/Restormer's restormer_arch.py, in Flax linen.

Inputs and outputs are NHWC. Submodules carry the official names, so an official checkpoint key
maps to one Flax path (PyTorch convs are OIHW, Flax HWIO; see sr_jax.convert.restormer):

  patch_embed.proj.weight                    -> patch_embed/kernel
  encoder_level{l}.{b}.norm1.body.weight     -> encoder_level{l}_{b}/norm1/scale  (.bias -> /bias)
  encoder_level{l}.{b}.attn.temperature      -> encoder_level{l}_{b}/attn/temperature  ((h,1,1) -> (h,))
  encoder_level{l}.{b}.attn.qkv.weight       -> encoder_level{l}_{b}/attn/qkv/kernel
  encoder_level{l}.{b}.attn.qkv_dwconv.weight-> .../attn/qkv_dwconv/kernel  (depthwise: (3, 3, 1, C))
  encoder_level{l}.{b}.ffn.project_in.weight -> .../ffn/project_in/kernel   (also dwconv, project_out)
  down1_2.body.0.weight                      -> down1_2/kernel   (also up4_3, ... for Upsample)
  latent.{b}.*, decoder_level{l}.{b}.*, refinement.{b}.*  -> latent_{b}/..., ...
  reduce_chan_level3.weight, skip_conv.weight, output.weight -> reduce_chan_level3/kernel, ...

The network: a 3x3 patch embedding, a 4-level U-Net of transformer blocks (channels x2 per
level, PixelUnshuffle down / PixelShuffle up), decoder skips concatenated (and reduced by a 1x1
conv at levels 3 and 2), refinement blocks at level 1, and a 3x3 output conv plus the input. A
transformer block is x + MDTA(norm1(x)) then x + GDFN(norm2(x)):

  MDTA  multi-Dconv head transposed attention: 1x1 qkv, depthwise 3x3, per head the channels
        attend to each other (q, k L2-normalised over the pixels; C/h x C/h attention scaled by a
        learnable per-head temperature), 1x1 projection. Cost is linear in the pixel count.
  GDFN  gated-Dconv feed-forward: 1x1 to 2*hidden, depthwise 3x3, gelu(x1) * x2 (exact erf GELU),
        1x1 back.

Inputs whose sides are not multiples of 8 are reflect-padded on the bottom/right (as the official
test scripts do) and the output is cropped back. LayerNorm statistics, the attention logits and
softmax run in float32 whatever the compute `dtype`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sr_jax.models import tlc, tlc_attention
from sr_jax.models.layers import (Conv, Conv1x1, DepthwiseConv3x3, LayerNorm2d, pixel_shuffle,
                                  pixel_unshuffle)

Array = jax.Array
Dtype = Any

# Depthwise kernels: LoRA excludes them (a grouped conv has no useful low-rank form).
DEPTHWISE_KERNELS = r'.*/(qkv_dwconv|dwconv)/kernel'
LAYERNORM_TYPES = ('WithBias', 'BiasFree')
SIZE_MULTIPLE = 8  # Three 2x down-samplings.

_OFFICIAL = dict(dim=48, num_blocks=(4, 6, 6, 8), num_refinement_blocks=4, heads=(1, 2, 4, 8),
                 ffn_expansion_factor=2.66, bias=False)
PRESETS: dict[str, dict[str, Any]] = {
    # Official configurations: motion deblurring, deraining and single-image defocus
    # deblurring use 'default' (26,126,644 params); real denoising (SIDD) and the Gaussian
    # denoisers use BiasFree LayerNorm (26,111,668 for RGB); dual-pixel defocus deblurring
    # takes the two views stacked (6 channels) and adds a skip conv.
    'default': dict(_OFFICIAL, layernorm_type='WithBias'),
    'real_denoising': dict(_OFFICIAL, layernorm_type='BiasFree'),
    'gaussian_gray': dict(_OFFICIAL, layernorm_type='BiasFree', inp_channels=1, out_channels=1),
    'dual_pixel': dict(_OFFICIAL, layernorm_type='WithBias', inp_channels=6,
                       dual_pixel_task=True),
    # Small layouts for tests and CPU demos (same structure, fewer and narrower blocks).
    'small': dict(dim=16, num_blocks=(1, 2, 2, 2), num_refinement_blocks=1, heads=(1, 2, 4, 8),
                  ffn_expansion_factor=2.66, bias=False, layernorm_type='WithBias'),
    'micro': dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2),
                  ffn_expansion_factor=2.66, bias=False, layernorm_type='WithBias'),
}


class BiasFreeLayerNorm2d(nn.Module):
  """Restormer's BiasFree_LayerNorm per pixel: x / sqrt(var(x) + eps) * scale.

  The numerator is NOT mean-centred (the variance is), exactly as the official code; the only
  parameter is `scale` (C,). Statistics in float32.
  """
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Normalises `x` of shape (N, H, W, C) per pixel."""
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = jnp.asarray(x, jnp.float32)
    var = jnp.var(x32, axis=-1, keepdims=True)
    y = x32 * lax.rsqrt(var + self.eps) * jnp.asarray(scale, jnp.float32)
    return y.astype(self.dtype)


def _norm(layernorm_type: str, dtype: Dtype, name: str) -> nn.Module:
  """The block's LayerNorm of the given official type ('WithBias' or 'BiasFree')."""
  if layernorm_type == 'BiasFree':
    return BiasFreeLayerNorm2d(dtype=dtype, name=name)
  return LayerNorm2d(eps=1e-5, dtype=dtype, name=name)


def _l2_normalise(x: Array, axis: int) -> Array:
  """x / max(||x||, 1e-12) along `axis` (torch.nn.functional.normalize)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, 1e-12)


def transposed_attention(q: Array, k: Array, v: Array, temperature: Array,
                         dtype: Dtype = jnp.float32) -> Array:
  """MDTA's core on (N, H, W, heads, c) arrays: per head, q and k L2-normalised over the pixels,
  softmax(temperature * q^T k) (c x c) applied to every pixel's v. Output: v's shape, `dtype`."""
  n, height, width, heads, c = q.shape
  flat = lambda t: t.reshape(n, height * width, heads, c)
  q = _l2_normalise(flat(q).astype(jnp.float32), axis=1)
  k = _l2_normalise(flat(k).astype(jnp.float32), axis=1)
  logits = jnp.einsum('nphc,nphd->nhcd', q, k) * temperature[None, :, None, None]
  attn = jax.nn.softmax(logits, axis=-1).astype(dtype)
  out = jnp.einsum('nhcd,nphd->nphc', attn, flat(v).astype(dtype))
  return out.reshape(n, height, width, heads, c)


class Attention(nn.Module):
  """MDTA: multi-Dconv head transposed attention over channels (C/h x C/h per head).

  `window` > 0 gathers the attention statistics in local windows of that many pixels (TLC,
  sr_jax.models.tlc_attention); 0 uses the whole map, as trained.
  """
  num_heads: int
  bias: bool = False
  dtype: Dtype = jnp.float32
  impl: str = 'auto'
  window: int = 0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies attention to `x` of shape (N, H, W, C); C must divide into the heads."""
    n, height, width, c = x.shape
    if c % self.num_heads:
      raise ValueError(f'{c} channels do not split into {self.num_heads} attention heads.')
    kw = dict(use_bias=self.bias, dtype=self.dtype, impl=self.impl)
    temperature = self.param('temperature', nn.initializers.ones, (self.num_heads,), jnp.float32)
    qkv = DepthwiseConv3x3(name='qkv_dwconv', **kw)(Conv1x1(3 * c, name='qkv', **kw)(x))
    # Channel index = head * (C / h) + channel within the head, as the official rearrange.
    heads = lambda t: t.reshape(n, height, width, self.num_heads, c // self.num_heads)
    q, k, v = (heads(t) for t in jnp.split(qkv, 3, axis=-1))
    if tlc.covers(self.window, height, width):
      out = transposed_attention(q, k, v, temperature, self.dtype)
    else:
      out = tlc_attention.local_transposed_attention(q, k, v, temperature, self.window,
                                                     self.dtype)
    return Conv1x1(c, name='project_out', **kw)(out.reshape(n, height, width, c))


class FeedForward(nn.Module):
  """GDFN: gated-Dconv feed-forward with hidden width int(C * ffn_expansion_factor)."""
  ffn_expansion_factor: float = 2.66
  bias: bool = False
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the feed-forward to `x` of shape (N, H, W, C)."""
    c = x.shape[-1]
    hidden = int(c * self.ffn_expansion_factor)
    kw = dict(use_bias=self.bias, dtype=self.dtype, impl=self.impl)
    x = Conv1x1(2 * hidden, name='project_in', **kw)(x)
    x1, x2 = jnp.split(DepthwiseConv3x3(name='dwconv', **kw)(x), 2, axis=-1)
    x = jax.nn.gelu(x1, approximate=False) * x2
    return Conv1x1(c, name='project_out', **kw)(x)


class TransformerBlock(nn.Module):
  """x + attn(norm1(x)), then x + ffn(norm2(x)); the channel count comes from the input."""
  num_heads: int
  ffn_expansion_factor: float = 2.66
  bias: bool = False
  layernorm_type: str = 'WithBias'
  dtype: Dtype = jnp.float32
  impl: str = 'auto'
  attn_window: int = 0  # Attention.window (TLC); 0 = global.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the block; the output has the input's shape and the compute dtype."""
    x = jnp.asarray(x, self.dtype)
    kw = dict(bias=self.bias, dtype=self.dtype, impl=self.impl)
    x = x + Attention(self.num_heads, window=self.attn_window, name='attn', **kw)(
        _norm(self.layernorm_type, self.dtype, 'norm1')(x))
    return x + FeedForward(self.ffn_expansion_factor, name='ffn', **kw)(
        _norm(self.layernorm_type, self.dtype, 'norm2')(x))


def reflect_pad_to_multiple(x: Array, multiple: int) -> Array:
  """Reflect-pads an NHWC image on the bottom/right to a multiple of `multiple` (as the official
  Restormer test scripts do with F.pad(..., 'reflect'))."""
  pad_h, pad_w = -x.shape[1] % multiple, -x.shape[2] % multiple
  if pad_h == 0 and pad_w == 0:
    return x
  if pad_h >= x.shape[1] or pad_w >= x.shape[2]:
    raise ValueError(f'Input of {x.shape[1]}x{x.shape[2]} pixels is too small to reflect-pad to '
                     f'a multiple of {multiple}; use at least {multiple}x{multiple}.')
  return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='reflect')


class Restormer(nn.Module):
  """Restormer: NHWC float input (N, H, W, inp_channels) -> float32 (N, H, W, out_channels).

  Fields mirror the official constructor (`layernorm_type` is its `LayerNorm_type`). `dtype` is
  the compute dtype (params are float32); `impl` selects the conv formulation ('auto', 'xla' or
  'shifted'; see layers.resolve_impl). `tlc_window` > 0 converts the model for large test
  images (TLC, sr_jax.models.tlc): attention statistics come from windows of that many input
  pixels (tlc.window_for(training crop size)); 0, the default, is the trained model. It
  changes no parameter.
  """
  inp_channels: int = 3
  out_channels: int = 3
  dim: int = 48
  num_blocks: Sequence[int] = (4, 6, 6, 8)
  num_refinement_blocks: int = 4
  heads: Sequence[int] = (1, 2, 4, 8)
  ffn_expansion_factor: float = 2.66
  bias: bool = False
  layernorm_type: str = 'WithBias'
  dual_pixel_task: bool = False
  dtype: Dtype = jnp.float32
  impl: str = 'auto'
  tlc_window: int = 0

  @property
  def size_multiple(self) -> int:
    """Input sides are padded to multiples of this (tiles should be multiples of it)."""
    return SIZE_MULTIPLE

  @property
  def input_channels(self) -> int:
    return self.inp_channels

  def _check(self) -> None:
    if len(self.num_blocks) != 4 or len(self.heads) != 4:
      raise ValueError(f'Restormer has 4 levels: num_blocks {tuple(self.num_blocks)} and heads '
                       f'{tuple(self.heads)} need 4 entries each.')
    if self.layernorm_type not in LAYERNORM_TYPES:
      raise ValueError(f'Unknown layernorm_type {self.layernorm_type!r}; use one of '
                       f'{LAYERNORM_TYPES}.')
    if self.dual_pixel_task and self.inp_channels != 6:
      raise ValueError('dual_pixel_task needs inp_channels=6 (the two views stacked).')
    if not self.dual_pixel_task and self.inp_channels != self.out_channels:
      raise ValueError(f'inp_channels {self.inp_channels} != out_channels {self.out_channels}: '
                       'the output adds the input (only dual_pixel_task differs).')

  def _level(self, x: Array, count: int, heads: int, prefix: str, level: int) -> Array:
    """`count` blocks on a map downsampled 2**level times."""
    window = tlc.level_window(self.tlc_window, level)
    for b in range(count):
      x = TransformerBlock(heads, self.ffn_expansion_factor, self.bias, self.layernorm_type,
                           dtype=self.dtype, impl=self.impl, attn_window=window,
                           name=f'{prefix}_{b}')(x)
    return x

  def _conv3(self, x: Array, features: int, name: str, use_bias: bool) -> Array:
    return Conv(features, 3, padding=1, use_bias=use_bias, dtype=self.dtype, impl=self.impl,
                name=name)(x)

  def _down(self, x: Array, name: str) -> Array:
    return pixel_unshuffle(self._conv3(x, x.shape[-1] // 2, name, False), 2)

  def _up(self, x: Array, name: str) -> Array:
    return pixel_shuffle(self._conv3(x, x.shape[-1] * 2, name, False), 2)

  def _reduce(self, x: Array, name: str) -> Array:
    return Conv1x1(x.shape[-1] // 2, use_bias=self.bias, dtype=self.dtype, impl=self.impl,
                   name=name)(x)

  @nn.compact
  def __call__(self, inp: Array) -> Array:
    """Restores `inp` of shape (N, H, W, inp_channels); any H, W >= 8 (padded internally)."""
    self._check()
    if inp.shape[-1] != self.inp_channels:
      raise ValueError(f'Restormer expects {self.inp_channels} input channels, got input of '
                       f'shape {inp.shape}.')
    height, width = inp.shape[1], inp.shape[2]
    inp = reflect_pad_to_multiple(jnp.asarray(inp, jnp.float32), SIZE_MULTIPLE)
    nb, nh = self.num_blocks, self.heads

    x0 = self._conv3(inp, self.dim, 'patch_embed', False)  # Bias-free whatever `bias` says.
    e1 = self._level(x0, nb[0], nh[0], 'encoder_level1', 0)
    e2 = self._level(self._down(e1, 'down1_2'), nb[1], nh[1], 'encoder_level2', 1)
    e3 = self._level(self._down(e2, 'down2_3'), nb[2], nh[2], 'encoder_level3', 2)
    latent = self._level(self._down(e3, 'down3_4'), nb[3], nh[3], 'latent', 3)

    d3 = jnp.concatenate([self._up(latent, 'up4_3'), e3], axis=-1)
    d3 = self._level(self._reduce(d3, 'reduce_chan_level3'), nb[2], nh[2], 'decoder_level3', 2)
    d2 = jnp.concatenate([self._up(d3, 'up3_2'), e2], axis=-1)
    d2 = self._level(self._reduce(d2, 'reduce_chan_level2'), nb[1], nh[1], 'decoder_level2', 1)
    d1 = jnp.concatenate([self._up(d2, 'up2_1'), e1], axis=-1)
    d1 = self._level(d1, nb[0], nh[0], 'decoder_level1', 0)
    d1 = self._level(d1, self.num_refinement_blocks, nh[0], 'refinement', 0)

    if self.dual_pixel_task:
      d1 = d1 + Conv1x1(2 * self.dim, use_bias=self.bias, dtype=self.dtype, impl=self.impl,
                        name='skip_conv')(x0)
      out = self._conv3(d1, self.out_channels, 'output', self.bias).astype(jnp.float32)
    else:
      out = self._conv3(d1, self.out_channels, 'output', self.bias).astype(jnp.float32) + inp
    return out[:, :height, :width, :]


_STAGES = ('patch_embed', 'encoder_level1', 'down1_2', 'encoder_level2', 'down2_3',
           'encoder_level3', 'down3_4', 'latent', 'up4_3', 'reduce_chan_level3',
           'decoder_level3', 'up3_2', 'reduce_chan_level2', 'decoder_level2', 'up2_1',
           'decoder_level1', 'refinement', 'skip_conv', 'output')


def block_order(block: str) -> tuple:
  """Sort key putting Restormer's top-level blocks ('encoder_level2_3', 'down2_3', ...) in
  data-flow order; unknown names go last."""
  for i, stage in enumerate(_STAGES):
    if block == stage or (block.startswith(stage + '_') and block[len(stage) + 1:].isdigit()):
      suffix = block[len(stage) + 1:]
      return (i, int(suffix) if suffix else -1, block)
  return (len(_STAGES), 0, block)
