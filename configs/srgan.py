r"""SRGAN x4: the MSRResNet generator (SRResNet without BatchNorm) with a standard GAN.

Two stages as in configs/esrgan.py (L1 pre-training of the generator in WORKDIR/base, then the
GAN from it), with BasicSR's MSRGAN weights: pixel L1 1e-2, perceptual 1, and the standard
(non-relativistic) GAN loss 5e-3 against the VGG-style discriminator. Ledig et al.'s original
recipe (MSE on VGG19 phi_5,4 after ReLU scaled by 1/12.75^2, adversarial 1e-3) is reachable with
--config.gan.perceptual_before_activation=False --config.gan.perceptual_criterion=l2 and the
weights set accordingly.

Paper scale:

  python -m sr_jax.main --config configs/srgan.py --workdir /tmp/srgan \
      --config.data.source=folder --config.data.train_dir=/data/DF2K_HR \
      --config.data.eval_dir=/data/Set14/GTmod12

Embedded demo (small MSRResNet, 2 CPU cores):

  python -m sr_jax.main --config configs/srgan.py:demo --workdir /tmp/srgan_demo
"""

import ml_collections

from configs import esrgan
from sr_jax.config import config_base as common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo",))
  config = common.base_config()
  config.job = "srgan"
  esrgan.sr_gan_job(config, "srresnet", "x4")
  config.gan.kind = "vanilla"
  if "demo" in variants:
    esrgan.apply_gan_demo(config)
  return config
