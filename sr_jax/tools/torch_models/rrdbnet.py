"""ESRGAN's RRDBNet in PyTorch (BasicSR's rrdbnet_arch.py layout and state_dict keys),
written from the architecture description: the reference of sr_jax's conversion tests and
benchmarks (torch is an optional extra).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LRELU_RRDB = 0.2  # ESRGAN's LeakyReLU slope.
RESIDUAL_SCALE = 0.2  # Dense blocks and RRDBs scale their residual branch by 0.2.


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
  """A 3x3 'same' convolution with bias, as every conv in both networks is."""
  return nn.Conv2d(cin, cout, 3, 1, 1, bias=True)


def lrelu(x: torch.Tensor, slope: float = LRELU_RRDB) -> torch.Tensor:
  return F.leaky_relu(x, negative_slope=slope)


def pixel_unshuffle(x: torch.Tensor, factor: int) -> torch.Tensor:
  """(B, C, H, W) -> (B, C * f * f, H / f, W / f); output channel c * f * f + dy * f + dx holds
  input pixel (f * y + dy, f * x + dx) of channel c (BasicSR's and torch's order)."""
  b, c, h, w = x.shape
  if h % factor or w % factor:
    raise ValueError(f"pixel_unshuffle by {factor} needs H and W divisible by it, got {h}x{w}.")
  x = x.reshape(b, c, h // factor, factor, w // factor, factor)
  return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


class DenseBlock(nn.Module):
  """Residual dense block: five convs fed by the concatenation of everything before them."""

  def __init__(self, num_feat: int, num_grow_ch: int):
    super().__init__()
    for k in range(1, 6):
      cin = num_feat + (k - 1) * num_grow_ch
      setattr(self, f"conv{k}", conv3x3(cin, num_feat if k == 5 else num_grow_ch))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x + 0.2 * conv5([x, x1, .., x4]), LeakyReLU after conv1..conv4."""
    features = [x]
    for k in range(1, 5):
      features.append(lrelu(getattr(self, f"conv{k}")(torch.cat(features, 1))))
    return x + RESIDUAL_SCALE * self.conv5(torch.cat(features, 1))


class RRDB(nn.Module):
  """Three dense blocks in a residual connection scaled by 0.2."""

  def __init__(self, num_feat: int, num_grow_ch: int):
    super().__init__()
    self.rdb1 = DenseBlock(num_feat, num_grow_ch)
    self.rdb2 = DenseBlock(num_feat, num_grow_ch)
    self.rdb3 = DenseBlock(num_feat, num_grow_ch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
  """BasicSR's RRDBNet (keys `conv_first`, `body.{i}.rdb{j}.conv{k}`, `conv_body`, ...).

  Scale 4: two (nearest x2, conv, LeakyReLU) stages. Scales 2 and 1 (BasicSR's extension)
  pixel-unshuffle the input by 2 or 4 first and keep both x2 stages. Scale 3 (not in BasicSR;
  the oldest ESRGAN code's x3, which sr_jax's RRDBNet follows) has one nearest x3 stage and no
  conv_up2.
  """

  def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4,
               num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32):
    super().__init__()
    if scale not in (1, 2, 3, 4):
      raise ValueError(f"RRDBNet scale must be 1, 2, 3 or 4, got {scale}.")
    self.scale = scale
    self.unshuffle = {1: 4, 2: 2}.get(scale, 1)
    self.conv_first = conv3x3(num_in_ch * self.unshuffle ** 2, num_feat)
    self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
    self.conv_body = conv3x3(num_feat, num_feat)
    self.conv_up1 = conv3x3(num_feat, num_feat)
    if scale != 3:
      self.conv_up2 = conv3x3(num_feat, num_feat)
    self.conv_hr = conv3x3(num_feat, num_feat)
    self.conv_last = conv3x3(num_feat, num_out_ch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """(B, num_in_ch, H, W) -> (B, num_out_ch, scale * H, scale * W)."""
    if self.unshuffle > 1:
      x = pixel_unshuffle(x, self.unshuffle)
    feat = self.conv_first(x)
    feat = feat + self.conv_body(self.body(feat))
    if self.scale == 3:
      feat = lrelu(self.conv_up1(F.interpolate(feat, scale_factor=3, mode="nearest")))
    else:
      feat = lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
      feat = lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
    return self.conv_last(lrelu(self.conv_hr(feat)))
