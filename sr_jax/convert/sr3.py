"""SR3 UNet checkpoints of the common PyTorch implementation: key rules and hyper-parameters.

Janspiry's Image-Super-Resolution-via-Iterative-Refinement saves the generator as the state
dict of its GaussianDiffusion module (`I{iter}_E{epoch}_gen.pth`): the UNet's tensors under
`denoise_fn.` plus the noise schedule's buffers (betas, alphas_cumprod, posterior_*, ...).
`normalize` strips the prefix and drops exactly those buffers (SCHEDULE_BUFFERS; the sampler
recomputes the schedule from the config), so a file with or without the prefix converts.
Anything else stays and is reported by the exact-or-fail mapping. Keys are then
sr_jax.models.sr3_unet's paths with `_{i}/` read as `.{i}/` and dots for slashes:
`downs_1/res_block/block1/block_0/scale` -> `downs.1.res_block.block1.block.0.weight`.

The architecture is read from the keys and shapes:
  in_channel, inner_channel  downs.0.weight (inner_channel, in_channel, 3, 3)
  out_channel                final_conv.block.3.weight (out_channel, ., 3, 3)
  channel_mults, res_blocks  the downs list: res blocks (`downs.{i}.res_block.*`) per level,
                             levels separated by Downsamples (`downs.{i}.conv.weight`); each
                             level's width / inner_channel is its mult
  attn_levels                the levels whose res blocks have `attn.*` tensors
  norm_groups                NOT in the file (GroupNorm has no shape-visible group count).
                             When the rest equals a preset's, that preset's norm_groups is taken
                             (e.g. mults (1, 2, 4, 8, 16) with one res block: sr3_64_512, 16);
                             otherwise the implementation's default, 32. Both are logged. A
                             model trained with another value must be converted with
                             `--set norm_groups=N` (the training config's `norm_groups`) or the
                             matching `--preset`: a wrong value still converts but computes
                             wrong outputs.
Dropout is not part of the architecture (no parameters): configs set it (config.model.dropout).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from absl import logging

from sr_jax.convert import mapping

NAME = "SR3 UNet"
RULES = ((r"_(\d+)/", r".\1/"),)
BROADCAST: dict[str, int] = {}
PREFIX = "denoise_fn."
SIGNATURE = (("noise_level_mlp.1.weight", "final_conv.block.3.weight"),
             (PREFIX + "noise_level_mlp.1.weight", PREFIX + "final_conv.block.3.weight"))
# GaussianDiffusion's noise-schedule buffers, saved beside the network's parameters.
SCHEDULE_BUFFERS = frozenset((
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"))
# Tuple fields whose --set value may have any length (convert._checked).
VARIABLE_LENGTH = ("channel_mults", "attn_levels")
DEFAULT_NORM_GROUPS = 32  # The implementation's default (config/sr_sr3_16_128.json keeps it).


class _FileNames(Mapping):
  """{canonical key: the file's key}: the file's own keys, and for keys it lacks the name the
  file's layout would give them (prefixed when the file's network keys are)."""

  def __init__(self, origin: dict[str, str], prefix: str):
    self._origin, self._prefix = origin, prefix

  def __getitem__(self, key: str) -> str:
    return self._origin.get(key, self._prefix + key)

  def __iter__(self) -> Iterator[str]:
    return iter(self._origin)

  def __len__(self) -> int:
    return len(self._origin)


def normalize(state: Mapping[str, Any]) -> tuple[dict[str, Any], Mapping[str, str]]:
  """(the UNet's state dict with canonical keys, {canonical key: the file's key}).

  Strips `denoise_fn.` and drops the schedule buffers; every other key is kept as it is.
  """
  prefixed = any(k.startswith(PREFIX) for k in state)
  out, origin = {}, {}
  for key, value in state.items():
    if key in SCHEDULE_BUFFERS:
      continue
    new = key[len(PREFIX):] if key.startswith(PREFIX) else key
    if new in out:
      raise ValueError(f"The checkpoint has both {origin[new]} and {key}, which are the same "
                       f"tensor ({new}) without the {PREFIX} prefix; remove one.")
    out[new], origin[new] = value, key
  return out, _FileNames(origin, PREFIX if prefixed else "")


def _kinds(state: Mapping[str, Any], prefix: str) -> list[str]:
  """What each `{prefix}.{i}` entry is, in order: 'res' (a res block), 'resample' (a
  Downsample / Upsample, `{prefix}.{i}.conv.weight`) or 'other'; checks the numbering."""
  kinds = []
  for i in range(mapping.block_count(state, prefix)):
    if f"{prefix}.{i}.res_block.block1.block.3.weight" in state:
      kinds.append("res")
    elif f"{prefix}.{i}.conv.weight" in state:
      kinds.append("resample")
    else:
      kinds.append("other")
  return kinds


def _levels(state: Mapping[str, Any]) -> list[list[int]]:
  """[[down-list index of each res block] per level], read from downs.1 onward."""
  levels: list[list[int]] = [[]]
  for i, kind in enumerate(_kinds(state, "downs")[1:], start=1):
    if kind == "res":
      levels[-1].append(i)
    elif kind == "resample":
      levels.append([])
    else:
      raise ValueError(f"downs.{i} is neither a res block (downs.{i}.res_block.block1.block.3."
                       f"weight) nor a Downsample (downs.{i}.conv.weight): not an SR3 UNet "
                       "layout sr_jax reads.")
  return levels


def _down_path(state: Mapping[str, Any], inner: int) -> tuple[tuple[int, ...], int, tuple[
    int, ...]]:
  """(channel_mults, res_blocks, attn_levels) from the downs list."""
  levels = _levels(state)
  counts = {len(blocks) for blocks in levels}
  if len(counts) != 1 or 0 in counts:
    raise ValueError(f"The downs list has {[len(b) for b in levels]} res blocks per level; the "
                     "SR3 UNet has the same number (res_blocks >= 1) at every level. Pass "
                     "--preset or --set channel_mults=... res_blocks=... attn_levels=...")
  mults, attn = [], []
  for level, blocks in enumerate(levels):
    width = int(state[f"downs.{blocks[-1]}.res_block.block1.block.3.weight"].shape[0])
    if width % inner:
      raise ValueError(f"downs.{blocks[-1]} has {width} channels, not a multiple of "
                       f"inner_channel {inner} (downs.0.weight).")
    mults.append(width // inner)
    if any(k.startswith(f"downs.{b}.attn.") for b in blocks for k in state):
      attn.append(level)
  return tuple(mults), counts.pop(), tuple(attn)


def _norm_groups(fields: dict[str, Any]) -> int:
  """The norm_groups of the preset equal to `fields` but for norm_groups, else the default."""
  from sr_jax.models import sr3_unet  # pylint: disable=g-import-not-at-top
  for name, preset in sr3_unet.PRESETS.items():
    if all(preset[k] == v for k, v in fields.items()):
      logging.info("SR3: norm_groups is not stored in checkpoints; the layout is that of "
                   "preset %r, so norm_groups=%d (override with --set norm_groups=N).", name,
                   preset["norm_groups"])
      return preset["norm_groups"]
  logging.info("SR3: norm_groups is not stored in checkpoints and the layout is no preset's: "
               "assuming the default %d. If the training config's norm_groups differs, convert "
               "with --set norm_groups=N (outputs are wrong otherwise).", DEFAULT_NORM_GROUPS)
  return DEFAULT_NORM_GROUPS


def infer_architecture(state: Mapping[str, Any]) -> dict[str, Any]:
  """The SR3UNet fields a state dict (prefixed or not) implies, before the user's overrides."""
  state, _ = normalize(state)
  first = mapping.require(state, "downs.0.weight", NAME)
  last = mapping.require(state, "final_conv.block.3.weight", NAME)
  inner = int(first.shape[0])
  mults, res_blocks, attn = _down_path(state, inner)
  fields = dict(in_channel=int(first.shape[1]), out_channel=int(last.shape[0]),
                inner_channel=inner, channel_mults=mults, attn_levels=attn,
                res_blocks=res_blocks)
  return {**fields, "norm_groups": _norm_groups(fields)}
