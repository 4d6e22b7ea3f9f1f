"""A PyTorch SR3 UNet with the module tree of the common implementation, for the converter tests.

Written from the architecture's description (Janspiry's Image-Super-Resolution-via-Iterative-
Refinement, model/sr3_modules/unet.py): the same modules under the same attribute names and
Sequential / ModuleList indices, so `state_dict()` has the key names of that implementation's
checkpoints (`downs.1.res_block.block1.block.0.weight`, `noise_level_mlp.3.bias`, ...). The
tests check the Flax model against this one, so a key or an operation the converter gets wrong
shows as a missing key or a numerical mismatch. `Diffusion` wraps the UNet as `denoise_fn` with
the noise-schedule buffers, giving the layout of a saved `I{iter}_E{epoch}_gen.pth`. Test
references only; nothing in the package imports this file.
"""

import math

import numpy as np
import torch
from torch import nn

SCHEDULE_BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                    "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2")


class PositionalEncoding(nn.Module):
  """(B,) levels -> (B, dim): sin then cos of level * exp(-ln(1e4) * k / (dim // 2))."""

  def __init__(self, dim: int):
    super().__init__()
    self.dim = dim

  def forward(self, level: torch.Tensor) -> torch.Tensor:
    half = self.dim // 2
    k = torch.arange(half, dtype=level.dtype, device=level.device) / half
    angles = level[:, None] * torch.exp(-math.log(1e4) * k[None])
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Swish(nn.Module):
  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class FeatureWiseAffine(nn.Module):
  """x + Linear(emb) per channel; the Linear sits in a one-element Sequential `noise_func`."""

  def __init__(self, emb_dim: int, channels: int):
    super().__init__()
    self.noise_func = nn.Sequential(nn.Linear(emb_dim, channels))

  def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    return x + self.noise_func(emb).view(x.shape[0], -1, 1, 1)


class Block(nn.Module):
  """Sequential(GroupNorm, Swish, Dropout or Identity, 3x3 conv) called `block`."""

  def __init__(self, dim: int, dim_out: int, groups: int, dropout: float = 0.0):
    super().__init__()
    self.block = nn.Sequential(nn.GroupNorm(groups, dim), Swish(),
                               nn.Dropout(dropout) if dropout else nn.Identity(),
                               nn.Conv2d(dim, dim_out, 3, padding=1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.block(x)


class ResnetBlock(nn.Module):
  def __init__(self, dim: int, dim_out: int, emb_dim: int, dropout: float, groups: int):
    super().__init__()
    self.noise_func = FeatureWiseAffine(emb_dim, dim_out)
    self.block1 = Block(dim, dim_out, groups)
    self.block2 = Block(dim_out, dim_out, groups, dropout)
    self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

  def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    h = self.block2(self.noise_func(self.block1(x), emb))
    return h + self.res_conv(x)


class SelfAttention(nn.Module):
  """One head over all pixels: softmax(q k^T / sqrt(C)) v, a 1x1 conv, plus the input."""

  def __init__(self, channels: int, groups: int):
    super().__init__()
    self.norm = nn.GroupNorm(groups, channels)
    self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
    self.out = nn.Conv2d(channels, channels, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    q, k, v = self.qkv(self.norm(x)).reshape(b, 3 * c, h * w).chunk(3, dim=1)
    attn = torch.softmax(torch.einsum("bcn,bcm->bnm", q, k) / math.sqrt(c), dim=-1)
    out = torch.einsum("bnm,bcm->bcn", attn, v).reshape(b, c, h, w)
    return self.out(out) + x


class ResnetBlocWithAttn(nn.Module):
  def __init__(self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float,
               with_attn: bool):
    super().__init__()
    self.with_attn = with_attn
    self.res_block = ResnetBlock(dim, dim_out, emb_dim, dropout, groups)
    if with_attn:
      self.attn = SelfAttention(dim_out, groups)

  def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    x = self.res_block(x, emb)
    return self.attn(x) if self.with_attn else x


class Downsample(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.conv = nn.Conv2d(dim, dim, 3, 2, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(x)


class Upsample(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.up = nn.Upsample(scale_factor=2, mode="nearest")
    self.conv = nn.Conv2d(dim, dim, 3, padding=1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.conv(self.up(x))


class UNet(nn.Module):
  """The SR3 UNet; a level has attention when image_size / 2**level is in attn_res."""

  def __init__(self, in_channel: int = 6, out_channel: int = 3, inner_channel: int = 64,
               norm_groups: int = 32, channel_mults=(1, 2, 4, 8, 8), attn_res=(16,),
               res_blocks: int = 2, dropout: float = 0.0, image_size: int = 128):
    super().__init__()
    inner = inner_channel
    self.noise_level_mlp = nn.Sequential(PositionalEncoding(inner), nn.Linear(inner, 4 * inner),
                                         Swish(), nn.Linear(4 * inner, inner))
    block = lambda cin, cout, attn: ResnetBlocWithAttn(cin, cout, inner, norm_groups, dropout,
                                                       attn)
    levels = len(channel_mults)
    attn_at = [image_size // 2 ** i in attn_res for i in range(levels)]
    pre, skips = inner, [inner]
    downs = [nn.Conv2d(in_channel, inner, 3, padding=1)]
    for i, mult in enumerate(channel_mults):
      for _ in range(res_blocks):
        downs.append(block(pre, inner * mult, attn_at[i]))
        pre = inner * mult
        skips.append(pre)
      if i < levels - 1:
        downs.append(Downsample(pre))
        skips.append(pre)
    self.downs = nn.ModuleList(downs)
    self.mid = nn.ModuleList([block(pre, pre, True), block(pre, pre, False)])
    ups = []
    for i in reversed(range(levels)):
      for _ in range(res_blocks + 1):
        ups.append(block(pre + skips.pop(), inner * channel_mults[i], attn_at[i]))
        pre = inner * channel_mults[i]
      if i > 0:
        ups.append(Upsample(pre))
    self.ups = nn.ModuleList(ups)
    self.final_conv = Block(pre, out_channel, norm_groups)

  def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """x = cat([condition, noisy], 1) (B, in_channel, H, W); level (B,) -> (B, out, H, W)."""
    emb = self.noise_level_mlp(level)
    feats = []
    for layer in self.downs:
      x = layer(x, emb) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
      feats.append(x)
    for layer in self.mid:
      x = layer(x, emb)
    for layer in self.ups:
      if isinstance(layer, ResnetBlocWithAttn):
        x = layer(torch.cat([x, feats.pop()], dim=1), emb)
      else:
        x = layer(x)
    return self.final_conv(x)


class Diffusion(nn.Module):
  """The UNet as `denoise_fn` beside a linear noise schedule's buffers, as GaussianDiffusion
  holds them: its state dict is a saved generator checkpoint's layout."""

  def __init__(self, unet: UNet, steps: int = 10):
    super().__init__()
    self.denoise_fn = unet
    betas = np.linspace(1e-4, 2e-2, steps)
    alphas_cumprod = np.cumprod(1.0 - betas)
    prev = np.append(1.0, alphas_cumprod[:-1])
    variance = betas * (1.0 - prev) / (1.0 - alphas_cumprod)
    values = (betas, alphas_cumprod, prev, np.sqrt(alphas_cumprod),
              np.sqrt(1.0 - alphas_cumprod), np.log(1.0 - alphas_cumprod),
              np.sqrt(1.0 / alphas_cumprod), np.sqrt(1.0 / alphas_cumprod - 1.0), variance,
              np.log(np.maximum(variance, 1e-20)), betas * np.sqrt(prev) / (1.0 - alphas_cumprod),
              (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod))
    for name, value in zip(SCHEDULE_BUFFERS, values):
      self.register_buffer(name, torch.tensor(value, dtype=torch.float32))


def randomize_(model: nn.Module, seed: int) -> nn.Module:
  """Fills every parameter with seeded random values, in place; returns the model.

  Conv and Linear weights ~ N(0, 1) / sqrt(fan_in); GroupNorm weights 1 + 0.2 N(0, 1) and every
  bias 0.1 N(0, 1), so a dropped norm affine or a misplaced bias shows.
  """
  g = torch.Generator().manual_seed(seed)
  norms = {name for name, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
  with torch.no_grad():
    for name, t in model.named_parameters():
      noise = torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)
      module, _, leaf = name.rpartition(".")
      if module in norms and leaf == "weight":
        t.copy_(1.0 + 0.2 * noise)
      elif leaf == "weight":
        t.copy_(noise / math.sqrt(math.prod(t.shape[1:])))
      else:
        t.copy_(0.1 * noise)
  return model


def numpy_state(model: nn.Module) -> dict:
  """The model's state dict as numpy float32 copies (the converter's input)."""
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
