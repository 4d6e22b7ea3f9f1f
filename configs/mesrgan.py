r"""MESRGAN x4 (Eriksson and Löf): ESRGAN with MobileNetV2 inverted-residual dense blocks.

Each 3x3 conv of RRDBNet's residual dense blocks becomes 1x1 expand (t = 6) -> LeakyReLU ->
3x3 depthwise -> LeakyReLU -> linear 1x1 projection (sr_jax/models/mesrgan.py); everything
else, the two training stages and the losses, are ESRGAN's (configs/esrgan.py).

Paper scale:

  python -m sr_jax.main --config configs/mesrgan.py --workdir /tmp/mesrgan \
      --config.data.source=folder --config.data.train_dir=/data/DF2K_HR \
      --config.data.eval_dir=/data/Set14/GTmod12

Embedded demo (small MESRGAN, 2 CPU cores):

  python -m sr_jax.main --config configs/mesrgan.py:demo --workdir /tmp/mesrgan_demo

Compare it with SRGAN and ESRGAN (runtime by batch size, and quality of trained runs):
`python -m sr_jax.tools.gan_compare`.
"""

import ml_collections

from configs import esrgan
from sr_jax.config import config_base as common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo",))
  config = common.base_config()
  config.job = "mesrgan"
  esrgan.sr_gan_job(config, "mesrgan", "x4")
  if "demo" in variants:
    esrgan.apply_gan_demo(config)
  return config
