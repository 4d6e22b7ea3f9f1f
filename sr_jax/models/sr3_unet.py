"""The SR3 denoising UNet (Saharia et al. 2021) in the layout of its common PyTorch port.

SR3 super-resolves by iterative refinement: a UNet predicts the noise `eps` in a noisy
high-resolution image, conditioned on the low-resolution input upsampled (bicubic) to the
high-resolution size and on the noise level sqrt(gamma). This module is that UNet, written to
compute exactly what Janspiry's Image-Super-Resolution-via-Iterative-Refinement computes
(model/sr3_modules/unet.py), so its released and user-trained checkpoints convert
(sr_jax.convert.sr3) and give the same outputs. Inputs and outputs are NHWC.

The network, with C = inner_channel and `pre` the running channel count:

  noise_level_mlp  sinusoidal encoding of the noise level (C features: sin of C/2 frequencies
                   10000^(-k / (C/2)) times the level, then cos of the same), Dense(C, 4C),
                   Swish, Dense(4C, C): the embedding every res block adds (FiLM, no affine).
  downs            a flat list: a 3x3 conv (in_channel -> C); per level i, `res_blocks` res
                   blocks to C * channel_mults[i] (with self-attention when i is in
                   attn_levels), then, except at the last level, a 3x3 stride-2 conv.
  mid              a res block with attention and one without, at the lowest resolution.
  ups              a flat list: per level from the last to 0, `res_blocks + 1` res blocks,
                   each fed concat(x, the skip) (x first) where the skips are every downs
                   output in reverse order; then, except at level 0, nearest x2 + a 3x3 conv.
  final_conv       GroupNorm, Swish, 3x3 conv to out_channel.

A res block is h = conv3(swish(gn(x))); h += Dense(emb); h = conv3(dropout(swish(gn(h))));
h + (1x1 conv of x when the widths differ, else x). Self-attention is single-headed over all
pixels: the GroupNorm of x through a bias-free 1x1 conv to q, k, v (channels in that order),
softmax(q k^T / sqrt(C)) v, a 1x1 conv, plus x. GroupNorms have eps 1e-5 and `norm_groups`
groups; Swish is x * sigmoid(x); dropout acts only in the second conv of res blocks, only when
not deterministic (the 'dropout' rng collection).

Key mapping: every submodule carries the PyTorch module's name with `_{index}` for a list or
Sequential index, so the rule `_(\\d+)/` -> `.\\1/` plus the generic renames of
sr_jax.convert.mapping (`/` -> `.`, kernel / a norm's scale -> weight; conv kernels OIHW <->
HWIO, Dense kernels (out, in) <-> (in, out)) give each path's torch key:

  downs_0/kernel                                   downs.0.weight
  downs_1/res_block/block1/block_0/scale           downs.1.res_block.block1.block.0.weight
  downs_1/res_block/block2/block_3/kernel          downs.1.res_block.block2.block.3.weight
  downs_1/res_block/noise_func/noise_func_0/kernel downs.1.res_block.noise_func.noise_func.0.weight
  downs_1/res_block/res_conv/kernel                downs.1.res_block.res_conv.weight
  downs_3/conv/kernel, ups_5/conv/kernel           the Downsample / Upsample convs
  mid_0/attn/{norm,qkv,out}/...                    mid.0.attn.{norm,qkv,out}.*
  noise_level_mlp_1/kernel, noise_level_mlp_3/...  noise_level_mlp.1.weight, .3.*
  final_conv/block_0/scale, final_conv/block_3/... final_conv.block.0.weight, .block.3.*

Deviations from the PyTorch model, none of which changes the parameters or, at the sizes the
PyTorch model accepts, the outputs:
  * Attention placement is `attn_levels` (level indices, 0 = full resolution) where PyTorch has
    `attn_res` (resolutions relative to `image_size`): level i has attention when
    image_size / 2**i is in attn_res. The model thus runs at any input size.
  * Inputs whose height or width is not a multiple of `size_multiple` (2**(levels - 1)), on
    which the PyTorch model fails at the first skip concatenation, are reflect-padded at the
    bottom and right to one, and the output is cropped back to the input's size.
  * The inputs are separate: `condition` (the upsampled low-resolution image) and `noisy`,
    concatenated in that order as the common implementation does; the noise level may be
    (B,) or its (B, 1).

Initialisation as that implementation trains from scratch (networks.init_weights
'orthogonal'): orthogonal conv and Dense kernels (gain 1), zero biases, GroupNorm scale 1 and
bias 0. `dtype` is the compute dtype; params, GroupNorm statistics, the attention softmax and
the output are float32.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sr_jax.models.layers import Conv, Conv1x1
from sr_jax.models.rrdbnet import upsample_nearest

Array = jax.Array
Dtype = Any

# Regex over parameter paths matching no path: the UNet has no depthwise kernels.
DEPTHWISE_KERNELS = r'(?!)'
NORM_EPS = 1e-5
KERNEL_INIT = nn.initializers.orthogonal(scale=1.0)
BIAS_INIT = nn.initializers.zeros

PRESETS: dict[str, dict[str, Any]] = {
    # config/sr_sr3_16_128.json of the common implementation (attn_res [16] at image_size 128).
    'sr3_16_128': dict(in_channel=6, out_channel=3, inner_channel=64, norm_groups=32,
                       channel_mults=(1, 2, 4, 8, 8), attn_levels=(3,), res_blocks=2,
                       dropout=0.2),
    # config/sr_sr3_64_512.json (attn_res []: attention only in the middle).
    'sr3_64_512': dict(in_channel=6, out_channel=3, inner_channel=64, norm_groups=16,
                       channel_mults=(1, 2, 4, 8, 16), attn_levels=(), res_blocks=1,
                       dropout=0.0),
    # The paper's 16 -> 128 face model (Saharia et al., appendix): twice as wide, 3 blocks.
    'paper_16_128': dict(in_channel=6, out_channel=3, inner_channel=128, norm_groups=32,
                         channel_mults=(1, 2, 4, 8, 8), attn_levels=(3,), res_blocks=3,
                         dropout=0.2),
    # Small layouts for CPU demos and tests (same structure).
    'tiny': dict(in_channel=6, out_channel=3, inner_channel=32, norm_groups=8,
                 channel_mults=(1, 2, 4), attn_levels=(2,), res_blocks=1, dropout=0.0),
    'micro': dict(in_channel=6, out_channel=3, inner_channel=16, norm_groups=4,
                  channel_mults=(1, 2), attn_levels=(1,), res_blocks=1, dropout=0.0),
}


def swish(x: Array) -> Array:
  """x * sigmoid(x), the implementation's Swish."""
  return x * jax.nn.sigmoid(x)


def positional_encoding(noise_level: Array, dim: int) -> Array:
  """(B,) noise levels -> (B, dim) float32: [sin(l * f_k), cos(l * f_k)], f_k = 1e4^(-k/half)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(1e4) * (jnp.arange(half, dtype=jnp.float32) / half))
  angles = jnp.asarray(noise_level, jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _conv3(features: int, dtype: Dtype, impl: str, name: str, strides: int = 1) -> Conv:
  """A 3x3 conv with padding 1 (stride 1 or 2) and the orthogonal init."""
  return Conv(features, 3, strides=strides, padding=1, dtype=dtype, impl=impl, name=name,
              kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)


def _conv1(features: int, dtype: Dtype, impl: str, name: str, use_bias: bool = True) -> Conv1x1:
  """A 1x1 conv with the orthogonal init."""
  return Conv1x1(features, use_bias=use_bias, dtype=dtype, impl=impl, name=name,
                 kernel_init=KERNEL_INIT, bias_init=BIAS_INIT)


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
  """A Dense layer (torch Linear) with the orthogonal init."""
  return nn.Dense(features, dtype=dtype, kernel_init=KERNEL_INIT, bias_init=BIAS_INIT,
                  name=name)


class GroupNorm(nn.Module):
  """torch.nn.GroupNorm(groups, C, eps=1e-5) over NHWC: statistics in float32 whatever the
  compute dtype (centred, biased variance), affine `scale` and `bias` of shape (C,)."""
  groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Normalises `x` (N, H, W, C) per sample and channel group."""
    n, h, w, c = x.shape
    if c % self.groups:
      raise ValueError(f'SR3UNet: a GroupNorm over {c} channels needs norm_groups dividing '
                       f'{c}, got norm_groups={self.groups}. (Checkpoints do not record '
                       'norm_groups: convert with the training config\'s value, '
                       '--set norm_groups=N.)')
    scale = self.param('scale', nn.initializers.ones, (c,), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    grouped = jnp.asarray(x, jnp.float32).reshape(n, h, w, self.groups, c // self.groups)
    mean = jnp.mean(grouped, axis=(1, 2, 4), keepdims=True)
    centred = grouped - mean
    var = jnp.mean(jnp.square(centred), axis=(1, 2, 4), keepdims=True)
    y = (centred * jax.lax.rsqrt(var + NORM_EPS)).reshape(n, h, w, c)
    return (y * scale + bias).astype(self.dtype)


class Block(nn.Module):
  """GroupNorm, Swish, Dropout (when dropout > 0), 3x3 conv: torch's `block.{0,1,2,3}`."""
  features: int
  groups: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    """(N, H, W, cin) -> (N, H, W, features)."""
    h = swish(GroupNorm(self.groups, self.dtype, name='block_0')(x))
    if self.dropout > 0:
      h = nn.Dropout(self.dropout, name='block_2')(h, deterministic=deterministic)
    return _conv3(self.features, self.dtype, self.impl, 'block_3')(h)


class FeatureWiseAffine(nn.Module):
  """Adds Dense(emb) to every pixel (the implementation's FiLM without affine level)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, emb: Array) -> Array:
    """x (N, H, W, features) + Dense(emb (N, E)) broadcast over H and W."""
    shift = _dense(self.features, self.dtype, 'noise_func_0')(emb)
    return x + shift[:, None, None, :].astype(x.dtype)


class ResnetBlock(nn.Module):
  """block2(block1(x) + Dense(emb)) + res_conv(x) (res_conv: 1x1 when widths differ)."""
  features: int
  groups: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, emb: Array, deterministic: bool = True) -> Array:
    """(N, H, W, cin), (N, E) -> (N, H, W, features)."""
    block = lambda dropout, name: Block(self.features, self.groups, dropout, self.dtype,
                                        self.impl, name=name)
    h = block(0.0, 'block1')(x)
    h = FeatureWiseAffine(self.features, self.dtype, name='noise_func')(h, emb)
    h = block(self.dropout, 'block2')(h, deterministic)
    if x.shape[-1] != self.features:
      x = _conv1(self.features, self.dtype, self.impl, 'res_conv')(x)
    return h + jnp.asarray(x, h.dtype)


class SelfAttention(nn.Module):
  """Single-head self-attention over all pixels with a residual: out(attn(qkv(norm(x)))) + x.

  The logits and the softmax are float32; the products run in the compute dtype.
  """
  groups: int
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """(N, H, W, C) -> (N, H, W, C)."""
    n, h, w, c = x.shape
    norm = GroupNorm(self.groups, self.dtype, name='norm')(x)
    qkv = _conv1(3 * c, self.dtype, self.impl, 'qkv', use_bias=False)(norm)
    q, k, v = jnp.split(qkv.reshape(n, h * w, 3 * c), 3, axis=-1)
    logits = jnp.einsum('bqc,bkc->bqk', q, k, preferred_element_type=jnp.float32)
    probs = jax.nn.softmax(logits / math.sqrt(c), axis=-1).astype(self.dtype)
    out = jnp.einsum('bqk,bkc->bqc', probs, v).reshape(n, h, w, c)
    return _conv1(c, self.dtype, self.impl, 'out')(out) + jnp.asarray(x, self.dtype)


class ResnetBlocWithAttn(nn.Module):
  """A ResnetBlock (`res_block`), then SelfAttention (`attn`) when with_attn."""
  features: int
  groups: int
  dropout: float = 0.0
  with_attn: bool = False
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array, emb: Array, deterministic: bool = True) -> Array:
    """(N, H, W, cin), (N, E) -> (N, H, W, features)."""
    x = ResnetBlock(self.features, self.groups, self.dropout, self.dtype, self.impl,
                    name='res_block')(x, emb, deterministic)
    if self.with_attn:
      x = SelfAttention(self.groups, self.dtype, self.impl, name='attn')(x)
    return x


class Downsample(nn.Module):
  """A 3x3 stride-2 conv with padding 1 (`conv`): halves even heights and widths."""
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _conv3(x.shape[-1], self.dtype, self.impl, 'conv', strides=2)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv (`conv`)."""
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _conv3(x.shape[-1], self.dtype, self.impl, 'conv')(upsample_nearest(x, 2))


class SR3UNet(nn.Module):
  """SR3's noise predictor: (condition, noisy, noise_level) -> eps, NHWC float32.

  `condition` (B, H, W, in_channel - out_channel) is the low-resolution image upsampled to
  H x W, `noisy` (B, H, W, out_channel) the noisy target, `noise_level` (B,) sqrt(gamma).
  Any H and W work: sizes that are not multiples of `size_multiple` are reflect-padded at the
  bottom/right and the output cropped back. Fields mirror the PyTorch constructor except
  `attn_levels` (see the module docstring); `dtype` is the compute dtype and `impl` the conv
  formulation ('auto', 'xla' or 'shifted'; see layers.resolve_impl).
  """
  in_channel: int = 6
  out_channel: int = 3
  inner_channel: int = 64
  norm_groups: int = 32
  channel_mults: tuple[int, ...] = (1, 2, 4, 8, 8)
  attn_levels: tuple[int, ...] = (3,)
  res_blocks: int = 2
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  impl: str = 'auto'

  @property
  def size_multiple(self) -> int:
    """Input sizes are padded to multiples of this (one halving per level but the last)."""
    return 2 ** (len(self.channel_mults) - 1)

  @property
  def input_channels(self) -> int:
    """Channels of the conditioning image (in_channel - out_channel)."""
    return self.in_channel - self.out_channel

  def example_inputs(self, size: int, batch: int = 1) -> tuple[Array, Array, Array]:
    """Zero (condition, noisy, noise_level) of a size x size image, for `init` or tracing."""
    zeros = lambda c: jnp.zeros((batch, size, size, c), jnp.float32)
    return zeros(self.input_channels), zeros(self.out_channel), jnp.zeros((batch,), jnp.float32)

  def _res(self, features: int, level: int | None, name: str) -> ResnetBlocWithAttn:
    """A res block at `level` (None: the middle's second block, without attention)."""
    with_attn = level in self.attn_levels
    return ResnetBlocWithAttn(features, self.norm_groups, self.dropout, with_attn, self.dtype,
                              self.impl, name=name)

  def _check(self, condition: Array, noisy: Array, noise_level: Array) -> Array:
    """Rejects bad shapes naming the fix; returns the noise level as (B,)."""
    if self.input_channels <= 0:
      raise ValueError(f'SR3UNet: in_channel {self.in_channel} must exceed out_channel '
                       f'{self.out_channel} (the input is concat(condition, noisy)).')
    if bad := [l for l in self.attn_levels if not 0 <= l < len(self.channel_mults)]:
      raise ValueError(f'SR3UNet: attn_levels {bad} are not levels of channel_mults '
                       f'{self.channel_mults} (0 .. {len(self.channel_mults) - 1}).')
    want = {'condition': self.input_channels, 'noisy': self.out_channel}
    for what, x in (('condition', condition), ('noisy', noisy)):
      if x.ndim != 4 or x.shape[-1] != want[what]:
        raise ValueError(f'SR3UNet expects an NHWC {what} with {want[what]} channels, got '
                         f'shape {x.shape}.')
    if condition.shape[:3] != noisy.shape[:3]:
      raise ValueError(f'SR3UNet: condition {condition.shape} and noisy {noisy.shape} differ '
                       'in batch or size; upsample the low-resolution image to the target size.')
    if jnp.size(noise_level) != noisy.shape[0]:
      raise ValueError(f'SR3UNet expects one noise level per image ({noisy.shape[0]}), got '
                       f'shape {jnp.shape(noise_level)}.')
    return jnp.reshape(noise_level, (noisy.shape[0],))

  def _embed(self, noise_level: Array) -> Array:
    """noise_level_mlp: encoding, Dense(C, 4C), Swish, Dense(4C, C)."""
    emb = positional_encoding(noise_level, self.inner_channel)
    emb = swish(_dense(4 * self.inner_channel, self.dtype, 'noise_level_mlp_1')(emb))
    return _dense(self.inner_channel, self.dtype, 'noise_level_mlp_3')(emb)

  def _pad(self, x: Array) -> Array:
    """Reflect-pads H and W at the bottom/right up to multiples of size_multiple."""
    m = self.size_multiple
    pad_h, pad_w = -x.shape[1] % m, -x.shape[2] % m
    if not pad_h and not pad_w:
      return x
    return jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode='reflect')

  def _down(self, x: Array, emb: Array, deterministic: bool) -> tuple[Array, list[Array]]:
    """The downs list; returns the last output and every output (the skips)."""
    x = _conv3(self.inner_channel, self.dtype, self.impl, 'downs_0')(x)
    feats, index = [x], 1
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.res_blocks):
        x = self._res(self.inner_channel * mult, level, f'downs_{index}')(x, emb, deterministic)
        feats.append(x)
        index += 1
      if level < len(self.channel_mults) - 1:
        x = Downsample(self.dtype, self.impl, name=f'downs_{index}')(x)
        feats.append(x)
        index += 1
    return x, feats

  def _up(self, x: Array, feats: list[Array], emb: Array, deterministic: bool) -> Array:
    """The ups list: res blocks fed concat(x, skip), Upsample between levels."""
    index = 0
    for level in reversed(range(len(self.channel_mults))):
      for _ in range(self.res_blocks + 1):
        block = self._res(self.inner_channel * self.channel_mults[level], level, f'ups_{index}')
        x = block(jnp.concatenate([x, feats.pop()], axis=-1), emb, deterministic)
        index += 1
      if level > 0:
        x = Upsample(self.dtype, self.impl, name=f'ups_{index}')(x)
        index += 1
    return x

  @nn.compact
  def __call__(self, condition: Array, noisy: Array, noise_level: Array, *,
               deterministic: bool = True) -> Array:
    """The predicted noise (B, H, W, out_channel), float32."""
    noise_level = self._check(condition, noisy, noise_level)
    height, width = noisy.shape[1:3]
    x = self._pad(jnp.concatenate([jnp.asarray(condition, jnp.float32),
                                   jnp.asarray(noisy, jnp.float32)], axis=-1))
    emb = self._embed(noise_level)
    x, feats = self._down(x, emb, deterministic)
    pre = x.shape[-1]
    x = ResnetBlocWithAttn(pre, self.norm_groups, self.dropout, True, self.dtype, self.impl,
                           name='mid_0')(x, emb, deterministic)
    x = self._res(pre, None, 'mid_1')(x, emb, deterministic)
    x = self._up(x, feats, emb, deterministic)
    out = Block(self.out_channel, self.norm_groups, 0.0, self.dtype, self.impl,
                name='final_conv')(x)
    return out[:, :height, :width].astype(jnp.float32)
