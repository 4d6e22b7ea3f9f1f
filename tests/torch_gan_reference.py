"""Independent PyTorch references of ESRGAN's RRDBNet and BasicSR's MSRResNet for tests.

Why: `python -m sr_jax.convert --arch rrdbnet|srresnet` must turn the released PyTorch weights
into Flax parameters that compute the same function. These modules are written from the
architecture description (BasicSR's rrdbnet_arch.py and srresnet_arch.py) with BasicSR's `state_dict()` key
names and shapes (`rrdbnet_arch.py`, `srresnet_arch.py`); tests fill them with random weights
(`randomize_`), convert their state dicts and compare forward passes.

RRDBNet checkpoints exist in three layouts with the same tensors in the same order. Besides
BasicSR's, this file builds the two xinntao/ESRGAN layouts as their own modules:
`EsrganRRDBNet` (the newer `RRDB_ESRGAN_x4.pth` attribute names) and `OldEsrganRRDBNet` (the
oldest code, whose single flattened `nn.Sequential` numbers the layers `model.0` ... `model.10`),
so the key renames (`to_esrgan_layout`, `to_old_esrgan_layout`) are checked against real module
trees, not against the converter's own arithmetic. Test references only; nothing in the
package imports this file.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# RRDBNet in BasicSR's layout is sr_jax.tools.torch_models.rrdbnet (shared with the benchmarks),
# re-exported here beside this file's own modules.
from sr_jax.tools.torch_models.rrdbnet import (LRELU_RRDB, RRDB, RESIDUAL_SCALE, DenseBlock,
                                               RRDBNet, conv3x3, lrelu, pixel_unshuffle)

__all__ = ["LRELU_RRDB", "LRELU_SRRESNET", "RESIDUAL_SCALE", "RRDB", "DenseBlock", "RRDBNet",
           "conv3x3", "lrelu", "pixel_unshuffle", "EsrganRRDB", "EsrganRRDBNet",
           "flat_sequential", "OldDenseBlock", "OldRRDB", "Shortcut", "OldEsrganRRDBNet",
           "to_esrgan_layout", "to_old_esrgan_layout", "ResidualBlockNoBN", "MSRResNet",
           "randomize_", "numpy_state"]
LRELU_SRRESNET = 0.1  # MSRResNet's LeakyReLU slope (its residual blocks use plain ReLU).


# ----------------------------------------------------------------------------------------------
# RRDBNet, the two xinntao/ESRGAN layouts.


class EsrganRRDB(nn.Module):
  """The newer ESRGAN code's RRDB: the same dense blocks named RDB1..RDB3."""

  def __init__(self, num_feat: int, num_grow_ch: int):
    super().__init__()
    self.RDB1 = DenseBlock(num_feat, num_grow_ch)
    self.RDB2 = DenseBlock(num_feat, num_grow_ch)
    self.RDB3 = DenseBlock(num_feat, num_grow_ch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + RESIDUAL_SCALE * self.RDB3(self.RDB2(self.RDB1(x)))


class EsrganRRDBNet(nn.Module):
  """The newer xinntao ESRGAN RRDBNet (`RRDB_ESRGAN_x4.pth`): always x4."""

  def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
               num_block: int = 23, num_grow_ch: int = 32):
    super().__init__()
    self.conv_first = conv3x3(num_in_ch, num_feat)
    self.RRDB_trunk = nn.Sequential(*[EsrganRRDB(num_feat, num_grow_ch)
                                      for _ in range(num_block)])
    self.trunk_conv = conv3x3(num_feat, num_feat)
    self.upconv1 = conv3x3(num_feat, num_feat)
    self.upconv2 = conv3x3(num_feat, num_feat)
    self.HRconv = conv3x3(num_feat, num_feat)
    self.conv_last = conv3x3(num_feat, num_out_ch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    feat = self.conv_first(x)
    feat = feat + self.trunk_conv(self.RRDB_trunk(feat))
    feat = lrelu(self.upconv1(F.interpolate(feat, scale_factor=2, mode="nearest")))
    feat = lrelu(self.upconv2(F.interpolate(feat, scale_factor=2, mode="nearest")))
    return self.conv_last(lrelu(self.HRconv(feat)))


def flat_sequential(*parts: nn.Module) -> nn.Sequential:
  """One nn.Sequential of `parts` with nested Sequentials spliced in, as the oldest ESRGAN
  code assembles its network (which is what numbers its layers model.0, model.1, ...)."""
  layers = []
  for part in parts:
    layers.extend(part.children() if isinstance(part, nn.Sequential) else [part])
  return nn.Sequential(*layers)


class OldDenseBlock(nn.Module):
  """The oldest code's dense block: each conv wrapped in its own Sequential (conv[, act])."""

  def __init__(self, num_feat: int, num_grow_ch: int):
    super().__init__()
    for k in range(1, 6):
      cin = num_feat + (k - 1) * num_grow_ch
      if k < 5:
        block = nn.Sequential(conv3x3(cin, num_grow_ch), nn.LeakyReLU(LRELU_RRDB))
      else:
        block = nn.Sequential(conv3x3(cin, num_feat))
      setattr(self, f"conv{k}", block)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    features = [x]
    for k in range(1, 5):
      features.append(getattr(self, f"conv{k}")(torch.cat(features, 1)))
    return x + RESIDUAL_SCALE * self.conv5(torch.cat(features, 1))


class OldRRDB(nn.Module):
  def __init__(self, num_feat: int, num_grow_ch: int):
    super().__init__()
    self.RDB1 = OldDenseBlock(num_feat, num_grow_ch)
    self.RDB2 = OldDenseBlock(num_feat, num_grow_ch)
    self.RDB3 = OldDenseBlock(num_feat, num_grow_ch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + RESIDUAL_SCALE * self.RDB3(self.RDB2(self.RDB1(x)))


class Shortcut(nn.Module):
  """x + sub(x), the old code's ShortcutBlock (its child is called `sub`)."""

  def __init__(self, sub: nn.Module):
    super().__init__()
    self.sub = sub

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.sub(x)


class OldEsrganRRDBNet(nn.Module):
  """The oldest ESRGAN RRDBNet: everything in one flattened Sequential called `model`.

  Parts: conv (wrapped in a Sequential), Shortcut(RRDBs + conv), per upsampler
  (Upsample, conv, LeakyReLU), conv + LeakyReLU, conv. x4 has two nearest-x2 upsamplers; x3
  has one nearest-x3 upsampler (as has the old x2, with factor 2, which sr_jax cannot express).
  """

  def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4,
               num_feat: int = 64, num_block: int = 23, num_grow_ch: int = 32):
    super().__init__()
    factors = {4: (2, 2), 3: (3,), 2: (2,)}[scale]
    first = nn.Sequential(conv3x3(num_in_ch, num_feat))
    trunk = flat_sequential(*[OldRRDB(num_feat, num_grow_ch) for _ in range(num_block)],
                            nn.Sequential(conv3x3(num_feat, num_feat)))
    ups = [nn.Sequential(nn.Upsample(scale_factor=f, mode="nearest"),
                         conv3x3(num_feat, num_feat), nn.LeakyReLU(LRELU_RRDB))
           for f in factors]
    hr = nn.Sequential(conv3x3(num_feat, num_feat), nn.LeakyReLU(LRELU_RRDB))
    last = nn.Sequential(conv3x3(num_feat, num_out_ch))
    self.model = flat_sequential(first, Shortcut(trunk), *ups, hr, last)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.model(x)


def to_esrgan_layout(state: dict) -> dict:
  """A BasicSR RRDBNet x4 state dict renamed to the newer xinntao layout (same tensors)."""
  top = {"conv_first": "conv_first", "conv_body": "trunk_conv", "conv_up1": "upconv1",
         "conv_up2": "upconv2", "conv_hr": "HRconv", "conv_last": "conv_last"}
  out = {}
  for key, value in state.items():
    parts = key.split(".")
    if parts[0] == "body":  # body.i.rdbJ.convK.leaf
      i, rdb, conv, leaf = parts[1:]
      out[f"RRDB_trunk.{i}.RDB{rdb[3:]}.{conv}.{leaf}"] = value
    else:
      out[f"{top[parts[0]]}.{parts[1]}"] = value
  return out


def to_old_esrgan_layout(state: dict, num_block: int) -> dict:
  """A BasicSR RRDBNet state dict (x4, or sr_jax's x3) renamed to the oldest layout."""
  x3 = "conv_up2.weight" not in state
  top = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}",
         "conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.5" if x3 else "model.8",
         "conv_last": "model.7" if x3 else "model.10"}
  out = {}
  for key, value in state.items():
    parts = key.split(".")
    if parts[0] == "body":
      i, rdb, conv, leaf = parts[1:]
      out[f"model.1.sub.{i}.RDB{rdb[3:]}.{conv}.0.{leaf}"] = value
    else:
      out[f"{top[parts[0]]}.{parts[1]}"] = value
  return out


# ----------------------------------------------------------------------------------------------
# MSRResNet (BasicSR).


class ResidualBlockNoBN(nn.Module):
  """x + conv2(relu(conv1(x))) (BasicSR's default res_scale 1)."""

  def __init__(self, num_feat: int):
    super().__init__()
    self.conv1 = conv3x3(num_feat, num_feat)
    self.conv2 = conv3x3(num_feat, num_feat)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNet(nn.Module):
  """BasicSR's MSRResNet: LeakyReLU(0.1) after conv_first, the upsampling convs + pixel
  shuffles and conv_hr; bilinear (align_corners=False) upsampled input added at the end."""

  def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
               num_block: int = 16, upscale: int = 4):
    super().__init__()
    if upscale not in (2, 3, 4):
      raise ValueError(f"MSRResNet upscale must be 2, 3 or 4, got {upscale}.")
    self.upscale = upscale
    self.conv_first = conv3x3(num_in_ch, num_feat)
    self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
    shuffle = 2 if upscale == 4 else upscale
    self.upconv1 = conv3x3(num_feat, num_feat * shuffle * shuffle)
    if upscale == 4:
      self.upconv2 = conv3x3(num_feat, num_feat * 4)
    self.conv_hr = conv3x3(num_feat, num_feat)
    self.conv_last = conv3x3(num_feat, num_out_ch)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C_out, s * H, s * W)."""
    out = self.body(lrelu(self.conv_first(x), LRELU_SRRESNET))
    shuffle = 2 if self.upscale == 4 else self.upscale
    out = lrelu(F.pixel_shuffle(self.upconv1(out), shuffle), LRELU_SRRESNET)
    if self.upscale == 4:
      out = lrelu(F.pixel_shuffle(self.upconv2(out), 2), LRELU_SRRESNET)
    out = self.conv_last(lrelu(self.conv_hr(out), LRELU_SRRESNET))
    return out + F.interpolate(x, scale_factor=self.upscale, mode="bilinear",
                               align_corners=False)


# ----------------------------------------------------------------------------------------------
# Random weights.


def randomize_(model: nn.Module, seed: int, gain: float = 1.0) -> nn.Module:
  """Fills every parameter with seeded random values, in place; returns the model.

  Conv weights ~ gain / sqrt(fan_in) * N(0, 1) (outputs stay O(1) through deep residual
  stacks, so a 1e-4 absolute tolerance stays meaningful); biases ~ 0.1 * N(0, 1), non-zero so
  a dropped or misplaced bias shows.
  """
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.named_parameters():
      noise = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
      if name.endswith("weight") and t.ndim == 4:
        t.copy_(noise * (gain / math.sqrt(t.shape[1] * t.shape[2] * t.shape[3])))
      else:
        t.copy_(0.1 * noise)
  return model


def numpy_state(model: nn.Module) -> dict:
  """The model's state dict as numpy float32 copies (the converter's input)."""
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
