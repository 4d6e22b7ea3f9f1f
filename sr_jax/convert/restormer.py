"""Restormer (swz30/Restormer restormer_arch.py) checkpoints: key rules and hyper-parameters.

Keys map as in sr_jax.models.restormer's docstring, e.g. `encoder_level2.3.norm1.body.weight`
-> `encoder_level2_3/norm1/scale`, `down1_2.body.0.weight` -> `down1_2/kernel`,
`latent.0.attn.temperature` -> `latent_0/attn/temperature` ((h, 1, 1) -> (h,)).

The architecture is read from the keys and shapes:
  inp_channels, dim     patch_embed.proj.weight (dim, inp_channels, 3, 3)
  out_channels          output.weight
  num_blocks            encoder_level1..3.*, latent.* (decoders must have the same counts)
  num_refinement_blocks refinement.*
  heads                 each level's first attn.temperature (heads, 1, 1)
  ffn_expansion_factor  2.66 (the official value) when int(C * 2.66) gives each level's hidden
                        width (project_in has 2 * hidden outputs), else the decimal with fewest
                        digits that does
  bias                  whether output.bias exists
  layernorm_type        'WithBias' when the norms have a bias, else 'BiasFree'
  dual_pixel_task       whether skip_conv.weight exists
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sr_jax.convert import mapping

NAME = "Restormer"
RULES = (
    (r"^(encoder_level\d|decoder_level\d|latent|refinement)_(\d+)/", r"\1.\2/"),
    (r"^(down\d_\d|up\d_\d)/", r"\1.body.0/"),
    (r"^patch_embed/", r"patch_embed.proj/"),
    (r"/(norm\d)/", r"/\1.body/"),
)
BROADCAST = {"temperature": 3}
SIGNATURE = "patch_embed.proj.weight"
OFFICIAL_FFN_FACTOR = 2.66
_ENCODERS = ("encoder_level1", "encoder_level2", "encoder_level3", "latent")
_DECODERS = ("decoder_level1", "decoder_level2", "decoder_level3")


def ffn_expansion_factor(dims_and_hidden: list[tuple[int, int]]) -> float:
  """The official 2.66 if it fits, else the decimal f with fewest digits and
  int(dim * f) == hidden for every (dim, hidden) pair."""
  if all(int(d * OFFICIAL_FFN_FACTOR) == h for d, h in dims_and_hidden):
    return OFFICIAL_FFN_FACTOR
  low = max(h / d for d, h in dims_and_hidden)  # int(d * f) == h  <=>  h/d <= f < (h+1)/d.
  for decimals in range(7):
    candidate = math.ceil(low * 10 ** decimals - 1e-9) / 10 ** decimals
    if all(int(d * candidate) == h for d, h in dims_and_hidden):
      return candidate
  raise ValueError(f"No ffn_expansion_factor gives the checkpoint's hidden widths "
                   f"{dims_and_hidden} (as (channels, hidden) pairs); pass it explicitly.")


def infer_architecture(state: Mapping[str, Any]) -> dict[str, Any]:
  """The Restormer constructor fields a state dict implies (before the user's overrides)."""
  embed = mapping.require(state, SIGNATURE, NAME)
  output = mapping.require(state, "output.weight", NAME)
  dim = int(embed.shape[0])
  num_blocks = tuple(mapping.block_count(state, level) for level in _ENCODERS)
  for decoder, count in zip(_DECODERS, num_blocks):
    if mapping.block_count(state, decoder) != count:
      raise ValueError(f"The checkpoint has {mapping.block_count(state, decoder)} {decoder} "
                       f"blocks but {count} in the matching encoder; Restormer ties them.")
  heads, ffn = [], []
  for level, (name, count) in enumerate(zip(_ENCODERS, num_blocks)):
    # Read a level's heads and hidden width from its first block (level 1: else refinement's,
    # which runs at 2 * dim); a level without blocks keeps the official heads. Absent keys are
    # left for mapping.convert to report as missing, with their shapes.
    first, channels = f"{name}.0", dim * 2 ** level
    if not count and level == 0 and "refinement.0.attn.temperature" in state:
      first, channels = "refinement.0", 2 * dim
    temperature = state.get(f"{first}.attn.temperature")
    heads.append(int(temperature.shape[0]) if temperature is not None else (1, 2, 4, 8)[level])
    project_in = state.get(f"{first}.ffn.project_in.weight")
    if project_in is not None:
      ffn.append((channels, int(project_in.shape[0]) // 2))
  return dict(
      inp_channels=int(embed.shape[1]),
      out_channels=int(output.shape[0]),
      dim=dim,
      num_blocks=num_blocks,
      num_refinement_blocks=mapping.block_count(state, "refinement"),
      heads=tuple(heads),
      ffn_expansion_factor=ffn_expansion_factor(ffn) if ffn else OFFICIAL_FFN_FACTOR,
      bias="output.bias" in state,  # The patch embedding has no bias in any configuration.
      layernorm_type=("WithBias" if any(k.endswith("norm1.body.bias") for k in state)
                      else "BiasFree"),
      dual_pixel_task="skip_conv.weight" in state,
  )
