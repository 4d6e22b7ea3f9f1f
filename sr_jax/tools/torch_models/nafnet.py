"""NAFNet in PyTorch (megvii-research/NAFNet's NAFNet_arch.py layout and state_dict keys),
written from the architecture description: the reference sr_jax's conversion tests compare
against and its benchmarks time side by side with the JAX model (torch is an optional extra).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


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
