"""PyTorch references of NAFNet and Restormer for tests, and random weights for them.

Why: the Flax models in sr_jax must load the official PyTorch checkpoints and compute the same
function. The modules (sr_jax.tools.torch_models, shared with the benchmarks) reproduce the
official architectures (megvii-research/NAFNet `NAFNet_arch.py`, swz30/Restormer
`restormer_arch.py`) with exactly the same `state_dict()` key names and shapes, written from the
architecture description rather than copied. Tests build them with random weights
(`randomize_`), convert the state dicts to Flax and compare forward passes.
"""

import math

import torch
from torch import nn

from sr_jax.tools.torch_models.nafnet import LayerNorm2d, NAFBlock, NAFNet, SimpleGate
from sr_jax.tools.torch_models.restormer import (
    Attention, BiasFree_LayerNorm, Downsample, FeedForward, LayerNorm, OverlapPatchEmbed,
    Restormer, TransformerBlock, Upsample, WithBias_LayerNorm, restormer_pad_forward)

__all__ = ["Attention", "BiasFree_LayerNorm", "Downsample", "FeedForward", "LayerNorm",
           "LayerNorm2d", "NAFBlock", "NAFNet", "OverlapPatchEmbed", "Restormer", "SimpleGate",
           "TransformerBlock", "Upsample", "WithBias_LayerNorm", "randomize_",
           "restormer_pad_forward"]

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
