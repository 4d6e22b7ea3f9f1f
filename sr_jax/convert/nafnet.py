"""NAFNet (megvii-research/NAFNet_arch.py) checkpoints: key rules and hyper-parameters from keys.

Keys map as in sr_jax.models.nafnet's docstring, e.g. `encoders.0.1.sca.1.weight` ->
`encoders_0_1/sca/kernel`, `ups.2.0.weight` -> `ups_2/kernel`, `middle_blks.3.beta` ->
`middle_blks_3/beta` ((1, C, 1, 1) -> (C,)).

The architecture is read from the keys and shapes: `img_channel` and `width` from
`intro.weight`, the number of levels from `downs.*`, and the blocks per level from
`encoders.{s}.*`, `middle_blks.*`, `decoders.{s}.*`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sr_jax.convert import mapping

NAME = "NAFNet"
RULES = (
    (r"^(encoders|decoders)_(\d+)_(\d+)/", r"\1.\2.\3/"),
    (r"^(middle_blks|downs)_(\d+)", r"\1.\2"),
    (r"^ups_(\d+)/", r"ups.\1.0/"),
    (r"/sca/", r"/sca.1/"),
)
BROADCAST = {"beta": 4, "gamma": 4}
SIGNATURE = "intro.weight"


def infer_architecture(state: Mapping[str, Any]) -> dict[str, Any]:
  """The NAFNet constructor fields a state dict implies (before the user's overrides)."""
  intro = mapping.require(state, SIGNATURE, NAME)
  levels = mapping.block_count(state, "downs")
  ups = mapping.block_count(state, "ups")
  if ups != levels:
    raise ValueError(f"The checkpoint has {levels} down-sampling convs (downs.*) but {ups} "
                     "up-sampling ones (ups.*); NAFNet needs as many of each.")
  return dict(
      img_channel=int(intro.shape[1]),
      width=int(intro.shape[0]),
      enc_blk_nums=tuple(mapping.block_count(state, f"encoders.{s}") for s in range(levels)),
      middle_blk_num=mapping.block_count(state, "middle_blks"),
      dec_blk_nums=tuple(mapping.block_count(state, f"decoders.{s}") for s in range(levels)),
  )
