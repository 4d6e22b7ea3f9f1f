"""Restormer in PyTorch (swz30/Restormer's restormer_arch.py layout and state_dict keys),
written from the architecture description: the reference of sr_jax's conversion tests and
benchmarks (torch is an optional extra).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _to_3d(x: torch.Tensor) -> torch.Tensor:
  """b c h w -> b (h w) c."""
  b, c, h, w = x.shape
  return x.reshape(b, c, h * w).permute(0, 2, 1)


def _to_4d(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
  """b (h w) c -> b c h w."""
  b, _, c = x.shape
  return x.permute(0, 2, 1).reshape(b, c, h, w)


class BiasFree_LayerNorm(nn.Module):
  """Scale-only LayerNorm over the last dim; the numerator is NOT mean-subtracted."""

  def __init__(self, normalized_shape: int):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(normalized_shape))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(var + 1e-5) * weight."""
    sigma = x.var(-1, keepdim=True, unbiased=False)
    return x / torch.sqrt(sigma + 1e-5) * self.weight


class WithBias_LayerNorm(nn.Module):
  """Standard LayerNorm over the last dim (eps 1e-5)."""

  def __init__(self, normalized_shape: int):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(normalized_shape))
    self.bias = nn.Parameter(torch.zeros(normalized_shape))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """(x - mu) / sqrt(var + 1e-5) * weight + bias."""
    mu = x.mean(-1, keepdim=True)
    sigma = x.var(-1, keepdim=True, unbiased=False)
    return (x - mu) / torch.sqrt(sigma + 1e-5) * self.weight + self.bias


class LayerNorm(nn.Module):
  """Per-pixel channel LayerNorm for NCHW tensors, wrapping the chosen variant as `body`."""

  def __init__(self, dim: int, LayerNorm_type: str):
    super().__init__()
    if LayerNorm_type == 'BiasFree':
      self.body = BiasFree_LayerNorm(dim)
    else:
      self.body = WithBias_LayerNorm(dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Normalises each pixel's channel vector."""
    h, w = x.shape[-2:]
    return _to_4d(self.body(_to_3d(x)), h, w)


class FeedForward(nn.Module):
  """Gated-Dconv feed-forward network (GDFN) with exact GELU."""

  def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
    super().__init__()
    hidden = int(dim * ffn_expansion_factor)
    self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
    self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, stride=1, padding=1,
                            groups=hidden * 2, bias=bias)
    self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """project_out(gelu(x1) * x2)."""
    x = self.project_in(x)
    x1, x2 = self.dwconv(x).chunk(2, dim=1)
    return self.project_out(F.gelu(x1) * x2)


class Attention(nn.Module):
  """Multi-Dconv head transposed attention (MDTA): attention across channels."""

  def __init__(self, dim: int, num_heads: int, bias: bool):
    super().__init__()
    self.num_heads = num_heads
    self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
    self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
    self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, stride=1, padding=1,
                                groups=dim * 3, bias=bias)
    self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Channel attention per head with L2-normalised q, k and learned temperature."""
    b, c, h, w = x.shape
    q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
    heads = self.num_heads
    q = q.reshape(b, heads, c // heads, h * w)
    k = k.reshape(b, heads, c // heads, h * w)
    v = v.reshape(b, heads, c // heads, h * w)
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * self.temperature
    attn = attn.softmax(dim=-1)
    out = (attn @ v).reshape(b, c, h, w)
    return self.project_out(out)


class TransformerBlock(nn.Module):
  """Pre-norm residual MDTA + GDFN."""

  def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
               LayerNorm_type: str):
    super().__init__()
    self.norm1 = LayerNorm(dim, LayerNorm_type)
    self.attn = Attention(dim, num_heads, bias)
    self.norm2 = LayerNorm(dim, LayerNorm_type)
    self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x + attn(norm1(x)), then + ffn(norm2(.))."""
    x = x + self.attn(self.norm1(x))
    return x + self.ffn(self.norm2(x))


class OverlapPatchEmbed(nn.Module):
  """3x3 conv embedding."""

  def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False):
    super().__init__()
    self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, stride=1, padding=1, bias=bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the projection conv."""
    return self.proj(x)


class Downsample(nn.Module):
  """Halves channels with a 3x3 conv, then PixelUnshuffle(2) (net: 2x channels, /2 size)."""

  def __init__(self, n_feat: int):
    super().__init__()
    self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat // 2, 3, 1, 1, bias=False),
                              nn.PixelUnshuffle(2))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Downsamples by 2."""
    return self.body(x)


class Upsample(nn.Module):
  """Doubles channels with a 3x3 conv, then PixelShuffle(2) (net: /2 channels, 2x size)."""

  def __init__(self, n_feat: int):
    super().__init__()
    self.body = nn.Sequential(nn.Conv2d(n_feat, n_feat * 2, 3, 1, 1, bias=False),
                              nn.PixelShuffle(2))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Upsamples by 2."""
    return self.body(x)


class Restormer(nn.Module):
  """The official Restormer (inputs must have H, W divisible by 8)."""

  def __init__(self, inp_channels: int = 3, out_channels: int = 3, dim: int = 48,
               num_blocks: Sequence[int] = (4, 6, 6, 8), num_refinement_blocks: int = 4,
               heads: Sequence[int] = (1, 2, 4, 8), ffn_expansion_factor: float = 2.66,
               bias: bool = False, LayerNorm_type: str = 'WithBias',
               dual_pixel_task: bool = False):
    super().__init__()

    def blocks(n: int, d: int, h: int) -> nn.Sequential:
      return nn.Sequential(*[
          TransformerBlock(dim=d, num_heads=h, ffn_expansion_factor=ffn_expansion_factor,
                           bias=bias, LayerNorm_type=LayerNorm_type) for _ in range(n)])

    self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
    self.encoder_level1 = blocks(num_blocks[0], dim, heads[0])
    self.down1_2 = Downsample(dim)
    self.encoder_level2 = blocks(num_blocks[1], int(dim * 2), heads[1])
    self.down2_3 = Downsample(int(dim * 2))
    self.encoder_level3 = blocks(num_blocks[2], int(dim * 4), heads[2])
    self.down3_4 = Downsample(int(dim * 4))
    self.latent = blocks(num_blocks[3], int(dim * 8), heads[3])
    self.up4_3 = Upsample(int(dim * 8))
    self.reduce_chan_level3 = nn.Conv2d(int(dim * 8), int(dim * 4), kernel_size=1, bias=bias)
    self.decoder_level3 = blocks(num_blocks[2], int(dim * 4), heads[2])
    self.up3_2 = Upsample(int(dim * 4))
    self.reduce_chan_level2 = nn.Conv2d(int(dim * 4), int(dim * 2), kernel_size=1, bias=bias)
    self.decoder_level2 = blocks(num_blocks[1], int(dim * 2), heads[1])
    self.up2_1 = Upsample(int(dim * 2))
    self.decoder_level1 = blocks(num_blocks[0], int(dim * 2), heads[0])
    self.refinement = blocks(num_refinement_blocks, int(dim * 2), heads[0])
    self.dual_pixel_task = dual_pixel_task
    if self.dual_pixel_task:
      self.skip_conv = nn.Conv2d(dim, int(dim * 2), kernel_size=1, bias=bias)
    self.output = nn.Conv2d(int(dim * 2), out_channels, kernel_size=3, stride=1, padding=1,
                            bias=bias)

  def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
    """Restores an NCHW image (no padding; H, W must be multiples of 8)."""
    inp_enc_level1 = self.patch_embed(inp_img)
    out_enc_level1 = self.encoder_level1(inp_enc_level1)
    out_enc_level2 = self.encoder_level2(self.down1_2(out_enc_level1))
    out_enc_level3 = self.encoder_level3(self.down2_3(out_enc_level2))
    latent = self.latent(self.down3_4(out_enc_level3))

    x = torch.cat([self.up4_3(latent), out_enc_level3], 1)
    x = self.decoder_level3(self.reduce_chan_level3(x))
    x = torch.cat([self.up3_2(x), out_enc_level2], 1)
    x = self.decoder_level2(self.reduce_chan_level2(x))
    x = torch.cat([self.up2_1(x), out_enc_level1], 1)
    x = self.decoder_level1(x)
    x = self.refinement(x)
    if self.dual_pixel_task:
      x = x + self.skip_conv(inp_enc_level1)
      return self.output(x)
    return self.output(x) + inp_img


def restormer_pad_forward(model: nn.Module, x: torch.Tensor, multiple: int = 8) -> torch.Tensor:
  """Reflect-pads right/bottom to a multiple of 8 (as the official test scripts), runs, crops."""
  h, w = x.shape[-2:]
  padh = (multiple - h % multiple) % multiple
  padw = (multiple - w % multiple) % multiple
  y = model(F.pad(x, (0, padw, 0, padh), 'reflect'))
  return y[:, :, :h, :w]
