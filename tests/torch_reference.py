"""Independent PyTorch reference implementations of NAFNet and Restormer for tests.

Why: the Flax models in sr_jax must load the official PyTorch checkpoints and compute the same
function. These modules reproduce the official architectures (megvii-research/NAFNet
`NAFNet_arch.py`, swz30/Restormer `restormer_arch.py`) with exactly the same `state_dict()`
key names and shapes, written from the architecture description rather than copied. Tests
build them with random weights (`randomize_`), convert the state dicts to Flax and compare
forward passes. They are test references only; nothing in the package imports this file.
"""

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# NAFNet


class LayerNorm2d(nn.Module):
  """Per-pixel LayerNorm over the channels of an NCHW tensor (official eps 1e-6)."""

  def __init__(self, channels: int, eps: float = 1e-6):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(channels))
    self.bias = nn.Parameter(torch.zeros(channels))
    self.eps = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Normalise over dim 1, then apply the per-channel affine."""
    mu = x.mean(1, keepdim=True)
    var = (x - mu).pow(2).mean(1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + self.eps)
    c = self.weight.shape[0]
    return self.weight.view(1, c, 1, 1) * y + self.bias.view(1, c, 1, 1)


class SimpleGate(nn.Module):
  """Splits channels in two halves and multiplies them."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x1 * x2 for the two channel halves."""
    x1, x2 = x.chunk(2, dim=1)
    return x1 * x2


class NAFBlock(nn.Module):
  """The official NAFBlock: gated depthwise conv + simplified channel attention + gated FFN."""

  def __init__(self, c: int, DW_Expand: int = 2, FFN_Expand: int = 2,
               drop_out_rate: float = 0.):
    super().__init__()
    dw = c * DW_Expand
    self.conv1 = nn.Conv2d(c, dw, 1, bias=True)
    self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw, bias=True)
    self.conv3 = nn.Conv2d(dw // 2, c, 1, bias=True)
    self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1, bias=True))
    self.sg = SimpleGate()
    ffn_channel = FFN_Expand * c
    self.conv4 = nn.Conv2d(c, ffn_channel, 1, bias=True)
    self.conv5 = nn.Conv2d(ffn_channel // 2, c, 1, bias=True)
    self.norm1 = LayerNorm2d(c)
    self.norm2 = LayerNorm2d(c)
    self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0. else nn.Identity()
    self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0. else nn.Identity()
    self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
    self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

  def forward(self, inp: torch.Tensor) -> torch.Tensor:
    """Two residual branches scaled by beta and gamma."""
    x = self.conv2(self.conv1(self.norm1(inp)))
    x = self.sg(x)
    x = x * self.sca(x)
    x = self.dropout1(self.conv3(x))
    y = inp + x * self.beta
    x = self.sg(self.conv4(self.norm2(y)))
    x = self.dropout2(self.conv5(x))
    return y + x * self.gamma


class NAFNet(nn.Module):
  """The official NAFNet U-Net (additive skips, pads input to a multiple of 2**len(enc))."""

  def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
               enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = ()):
    super().__init__()
    self.intro = nn.Conv2d(img_channel, width, 3, padding=1, bias=True)
    self.ending = nn.Conv2d(width, img_channel, 3, padding=1, bias=True)
    self.encoders = nn.ModuleList()
    self.decoders = nn.ModuleList()
    self.middle_blks = nn.ModuleList()
    self.ups = nn.ModuleList()
    self.downs = nn.ModuleList()
    chan = width
    for num in enc_blk_nums:
      self.encoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
      self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2, bias=True))
      chan *= 2
    self.middle_blks = nn.Sequential(*[NAFBlock(chan) for _ in range(middle_blk_num)])
    for num in dec_blk_nums:
      self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False),
                                    nn.PixelShuffle(2)))
      chan //= 2
      self.decoders.append(nn.Sequential(*[NAFBlock(chan) for _ in range(num)]))
    self.padder_size = 2 ** len(self.encoders)

  def check_image_size(self, x: torch.Tensor) -> torch.Tensor:
    """Zero-pads right/bottom to a multiple of padder_size."""
    _, _, h, w = x.shape
    mod_pad_h = (self.padder_size - h % self.padder_size) % self.padder_size
    mod_pad_w = (self.padder_size - w % self.padder_size) % self.padder_size
    return F.pad(x, (0, mod_pad_w, 0, mod_pad_h))

  def forward(self, inp: torch.Tensor) -> torch.Tensor:
    """Restores an NCHW image; output has the input's spatial size."""
    _, _, h, w = inp.shape
    inp = self.check_image_size(inp)
    x = self.intro(inp)
    encs = []
    for encoder, down in zip(self.encoders, self.downs):
      x = encoder(x)
      encs.append(x)
      x = down(x)
    x = self.middle_blks(x)
    for decoder, up, enc_skip in zip(self.decoders, self.ups, encs[::-1]):
      x = up(x)
      x = x + enc_skip
      x = decoder(x)
    x = self.ending(x)
    x = x + inp
    return x[:, :, :h, :w]


# ----------------------------------------------------------------------------------------------
# Restormer


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


# ----------------------------------------------------------------------------------------------
# Random weights


def randomize_(model: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
  """Fills every parameter and floating buffer with seeded random values, in place.

  Conv weights ~ scale / sqrt(fan_in) * N; conv biases ~ 0.1 N; norm weights ~ 1 + 0.1 N, norm
  biases ~ 0.1 N; NAFNet beta / gamma ~ 0.1 N (non-zero so both branches are exercised);
  Restormer temperature ~ U(0.5, 1.5). Returns the model.
  """
  g = torch.Generator().manual_seed(seed)

  def randn(t: torch.Tensor) -> torch.Tensor:
    return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)

  with torch.no_grad():
    for name, t in model.state_dict(keep_vars=True).items():
      if not torch.is_floating_point(t):
        continue
      leaf = name.rsplit('.', 1)[-1]
      if leaf == 'temperature':
        u = torch.rand(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
        t.copy_(0.5 + u)
      elif leaf in ('beta', 'gamma'):
        t.copy_(0.1 * randn(t))
      elif leaf == 'weight' and t.ndim == 4:
        fan_in = t.shape[1] * t.shape[2] * t.shape[3]
        t.copy_(randn(t) * (scale / math.sqrt(fan_in)))
      elif leaf == 'weight' and t.ndim == 1:
        t.copy_(1.0 + 0.1 * randn(t))
      else:
        t.copy_(0.1 * randn(t))
  return model
