r"""A picture of what the network is trained on: one clean crop, each op alone, PROD chains.

  python -m sr_jax.data.preview --config configs/prod_nafnet.py:demo --output prod.png

writes a labelled grid: the first row holds a clean crop and that crop degraded by each
candidate op on its own; the following rows hold chains the configured mode draws (for PROD:
random subsets in random order), each labelled with its ops and their headline parameter
(blur sigma, JPEG quality, ...). Paired datasets have no chain to show: their rows are stored
(LQ, GT) crops. The trainer writes the same grid to TensorBoard (`data/degradations`) at the
start of a run. LR inputs of SR configs are shown enlarged (nearest) to the target size.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sr_jax.data import choose_source, degradations, pipeline
from sr_jax.util import errors

_MIN_TILE = 128  # Small training crops are enlarged for display.
_FONT = ImageFont.load_default()
_LINE_PX = 12


def _to_display(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 HWC, enlarged by nearest-neighbour repetition to at least `size` pixels high."""
  factor = max(1, -(-size // image.shape[0]))
  image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def wrap_label(label: str, width_px: int, font: ImageFont.ImageFont) -> list[str]:
  """The label in lines no wider than `width_px` pixels in `font` (a word longer than a line
  is broken inside), all of it: nothing is cut off."""
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
  lines: list[str] = []
  for word in label.split():
    while measure(word, font=font) > width_px and len(word) > 1:  # Break an overlong word.
      cut = max([1] + [k for k in range(1, len(word)) if measure(word[:k], font=font) <= width_px])
      lines.append(word[:cut])
      word = word[cut:]
    if lines and measure(f"{lines[-1]} {word}", font=font) <= width_px:
      lines[-1] = f"{lines[-1]} {word}"
    else:
      lines.append(word)
  return lines or [""]


def _label_tile(image: np.ndarray, lines: Sequence[str], size: int, num_lines: int) -> np.ndarray:
  """The tile with its caption `lines` written on a strip of `num_lines` lines beneath it."""
  tile = Image.fromarray(_to_display(image, size)[:size, :size])
  canvas = Image.new("RGB", (size, size + num_lines * _LINE_PX + 4), (255, 255, 255))
  canvas.paste(tile, (0, 0))
  draw = ImageDraw.Draw(canvas)
  for i, line in enumerate(lines):
    draw.text((2, size + 2 + i * _LINE_PX), line, fill=(0, 0, 0), font=_FONT)
  return np.asarray(canvas)


def _captioned(tiles: Sequence[tuple[np.ndarray, str]], size: int) -> list[np.ndarray]:
  """Every tile captioned in full, on strips as tall as the longest caption needs."""
  wrapped = [wrap_label(label, size - 4, _FONT) for _, label in tiles]
  num_lines = max(len(lines) for lines in wrapped)
  return [_label_tile(image, lines, size, num_lines)
          for (image, _), lines in zip(tiles, wrapped)]


def _grid(tiles: Sequence[np.ndarray], columns: int) -> np.ndarray:
  """Tiles (all the same shape) in rows of `columns`, separated by 4 white pixels."""
  h, w, _ = tiles[0].shape
  rows = -(-len(tiles) // columns)
  grid = np.full((rows * (h + 4), columns * (w + 4), 3), 255, np.uint8)
  for i, tile in enumerate(tiles):
    r, c = divmod(i, columns)
    grid[r * (h + 4):r * (h + 4) + h, c * (w + 4):c * (w + 4) + w] = tile
  return grid


def _synthetic_tiles(clean: np.ndarray, spec: degradations.DegradationSpec, seed: int,
                     num_chains: int) -> list[tuple[np.ndarray, str]]:
  tiles = [(clean, "clean")]
  for k, name in enumerate(spec.chain_ops):
    rng = np.random.default_rng([seed, 1, k])
    single = degradations.DegradationSpec("chain", (name,), scale=spec.scale,
                                          resize=spec.resize, ranges=spec.ranges)
    lq, _, chain = degradations.degrade_with_chain(clean, rng, single)
    tiles.append((lq, degradations.describe(chain)))
  for k in range(num_chains):
    lq, _, chain = degradations.degrade_with_chain(clean, np.random.default_rng([seed, 2, k]),
                                                   spec)
    resized = f"x{spec.effective_scale} {spec.resize}" if spec.effective_scale > 1 else ""
    label = " > ".join(filter(None, [resized, degradations.describe(chain) if chain else ""]))
    tiles.append((lq, f"{spec.kind}: {label or 'clean'}"))
  return tiles


def degradation_grid(data_config: Any, *, seed: int = 0, degradation: Any = None,
                     num_chains: int = 8) -> np.ndarray:
  """The preview grid (uint8 HWC) for a `data` config; see the module docstring."""
  spec = degradations.as_spec(data_config.degradation if degradation is None else degradation)
  scale = spec.effective_scale
  source = choose_source.make_source(data_config, "train", scale)
  size = data_config.crop_size
  display = max(size, _MIN_TILE)
  record = source[0]
  if "lq" in record:
    tiles = []
    for index in range(min(len(source), num_chains)):
      pair = pipeline.RandomCropPair(size, spec, augment=False).random_map(
          source[index], np.random.default_rng([seed, index]))
      tiles += [(pair["lq"], f"LQ {source.names[index]}"), (pair["gt"], "GT")]
    columns = 4
  else:
    clean = pipeline.center_crop(record["image"], size)
    clean = clean[:clean.shape[0] // scale * scale, :clean.shape[1] // scale * scale]
    tiles = _synthetic_tiles(clean, spec, seed, num_chains)
    columns = max(4, 1 + len(spec.chain_ops))
  return _grid(_captioned(tiles, display), columns)


def main(argv: Sequence[str]) -> None:
  """Writes the grid of --config to --output (see the module docstring)."""
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from sr_jax.config import config_cli  # pylint: disable=g-import-not-at-top
  if config_cli.shown():
    return
  args = flags.FLAGS
  config = args.config
  grid = degradation_grid(config.data, seed=config.seed, num_chains=args.chains)
  Image.fromarray(grid).save(args.output)
  print(f"Wrote {args.output} ({grid.shape[1]}x{grid.shape[0]}): degradation "
        f"'{config.data.degradation.kind}' on data.source='{config.data.source}'.")


def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (train.py imports this module)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Job config file.", lock_config=True)
  flags.DEFINE_string("output", "degradations.png", "PNG file to write.")
  flags.DEFINE_integer("chains", 8, "Number of sampled chains to show.")
  flags.mark_flag_as_required("config")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from sr_jax.config import config_cli  # pylint: disable=g-import-not-at-top
  _define_flags()
  config_cli.define_show_config()
  app.run(errors.guarded(main), flags_parser=config_cli.parse_flags)
