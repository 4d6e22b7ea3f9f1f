"""`python -m sr_jax.convert`: official PyTorch checkpoint -> sr_jax parameter directory.

  python -m sr_jax.convert --arch nafnet --src NAFNet-SIDD-width32.pth --dst bases/nafnet_sidd
  python -m sr_jax.convert --arch restormer --src motion_deblurring.pth --dst bases/restormer
  python -m sr_jax.convert --arch restormer --src model.safetensors --dst D \
      --set ffn_expansion_factor=2.66 --key params
  python -m sr_jax.convert --arch rrdbnet --src RRDB_ESRGAN_x4.pth --dst bases/esrgan_x4
  python -m sr_jax.convert --arch srresnet --src MSRResNet_x4.pth --dst bases/msrresnet_x4
  python -m sr_jax.convert --arch sr3 --src I640000_E37_gen.pth --dst bases/sr3_16_128
  python -m sr_jax.convert --arch sr3 --src my_gen.pth --dst D --set norm_groups=16
  python -m sr_jax.convert --arch vgg19 --src vgg19-dcbbb36e.pth --dst bases/vgg19

Everything about the architecture is read from the checkpoint; `--preset` and `--set` override
it (and a mismatch with the file's shapes is then an error naming the keys). SR3's norm_groups
is the exception: no shape shows it, so it comes from a matching preset or defaults to 32 (a
logged note says which); pass the training config's value with --set norm_groups=N.
`.pth`/`.pt` need PyTorch (`pip install torch==2.13.0`); `.safetensors` does not.
"""

from __future__ import annotations

import ast
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import app, flags, logging

from sr_jax import convert
from sr_jax.util import console, errors

FLAGS = flags.FLAGS
flags.DEFINE_enum("arch", None, sorted(convert.CONVERTERS) + ["vgg19"],
                  "Architecture of the checkpoint (vgg19: torchvision's, for the perceptual "
                  "loss).")
flags.DEFINE_string("src", None, "Official checkpoint: .pth, .pt or .safetensors.")
flags.DEFINE_string("dst", None, "Directory to write (must not exist, or be empty).")
flags.DEFINE_string("preset", None, "sr_jax preset whose fields override the inferred ones.")
flags.DEFINE_multi_string("set", [], "field=value overriding one architecture field, e.g. "
                          "ffn_expansion_factor=2.66 or num_blocks=[4,6,6,8].")
flags.DEFINE_string("key", "auto", "Entry holding the weights: 'auto' (params_ema, params, "
                    "state_dict, model, else the top level), a name, or '' for the top level.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --dst.")
flags.mark_flags_as_required(["arch", "src", "dst"])


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """{'field': value} from 'field=value' strings (values as Python literals, else strings)."""
  out = {}
  for item in items:
    field, sep, text = item.partition("=")
    if not sep or not field.strip():
      raise ValueError(f"--set {item!r} must look like field=value.")
    try:
      value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
      value = text.strip()  # A bare word such as BiasFree.
    out[field.strip()] = value
  return out


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  console.short_console()
  t0 = time.perf_counter()
  if FLAGS.arch == "vgg19":
    convert_vgg19()
    return
  try:
    result = convert.convert_file(FLAGS.arch, FLAGS.src, FLAGS.dst, preset=FLAGS.preset,
                                  overrides=parse_overrides(FLAGS.set), key=FLAGS.key,
                                  overwrite=FLAGS.overwrite)
  except (FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  arch = {k: v for k, v in result.architecture.items() if k != "name"}
  preset = (f"preset {result.preset!r}" if result.preset
            else "no sr_jax preset (set the config's model fields to match)")
  print(f"Converted {FLAGS.src} -> {FLAGS.dst} in {time.perf_counter() - t0:.1f} s: "
        f"{FLAGS.arch} {arch}, {result.num_params:,} parameters, {preset}.")
  if result.preset:
    print(f"Use it as a base: --config.model.name={FLAGS.arch} "
          f"--config.model.preset={result.preset} --config.base.checkpoint={FLAGS.dst}")
  sr3 = " --scale 8 --sampler ddim --steps 50" if FLAGS.arch == "sr3" else ""
  print(f"Or restore images: python -m sr_jax.infer --checkpoint {FLAGS.dst} --input IN "
        f"--output OUT{sr3}")


def convert_vgg19() -> None:
  """torchvision's VGG19 features -> the perceptual loss's weights (no architecture options)."""
  from sr_jax.convert import vgg19  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.preset or FLAGS.set:
      raise ValueError("--arch vgg19 has a fixed architecture; drop --preset / --set.")
    vgg19.convert_vgg19_file(FLAGS.src, FLAGS.dst, overwrite=FLAGS.overwrite, key=FLAGS.key)
  except (FileNotFoundError, FileExistsError, ImportError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"Converted {FLAGS.src} -> {FLAGS.dst} (VGG19 features). Use it as ESRGAN's perceptual "
        f"loss: --config.gan.perceptual_network=vgg19 --config.gan.perceptual_checkpoint="
        f"{FLAGS.dst} --config.gan.perceptual_layers=conv5_4=1.0")


def command() -> None:
  """The `sr-jax-convert` console command (the same as python -m sr_jax.convert)."""
  app.run(errors.guarded(main))


if __name__ == "__main__":
  command()
