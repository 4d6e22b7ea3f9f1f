r"""PROD pre-training of NAFNet: a base that has seen many degradations in random order.

PROD (Park, Kim and Chun, ECCV 2024): each training crop is degraded by a random subset (1 to 3) of {Gaussian blur
(isotropic or anisotropic), motion blur, Gaussian noise, JPEG, rain} applied in a random order,
and the network learns to restore the clean crop. The result is the base that fine-tuning jobs
(LoRA, CoLoRA) adapt to new tasks; haze, low light and Poisson noise are left out of the set on
purpose so fine-tuning demos have tasks the base never saw.

Paper-scale (SIDD width-32 layout, your own clean images):

  python -m sr_jax.main --config configs/prod_nafnet.py --workdir /tmp/prod_nafnet \
      --config.data.source=folder --config.data.train_dir=/data/clean/train \
      --config.data.eval_dir=/data/clean/val --config.data.num_workers=8

Embedded demo (scikit-image's bundled photos, 2 CPU cores, about 3.5 minutes):

  python -m sr_jax.main --config configs/prod_nafnet.py:demo --workdir /tmp/prod_nafnet_demo

Either writes the base to WORKDIR/export/params; fine-tuning configs load it with
`--config.base.checkpoint=WORKDIR/export/params`. See what the network is trained on with

  python -m sr_jax.data.preview --config configs/prod_nafnet.py:demo --output prod.png

Ablations (the paper's baselines): `--config.data.degradation.kind=fixed` (the same random
subsets, always in the listed order) and `kind=single` (one degradation per crop).

Expected demo result (width-16 NAFNet, 1500 steps of 8 64x64 crops), PSNR/SSIM on RGB of the
three held-out photos, each degraded by its own PROD chain: degraded input 20.03 dB / 0.526,
PROD-trained 22.65 / 0.574.
"""

import ml_collections

from sr_jax import objectives
from sr_jax.config import config_base as common

# PROD's degradation set (Park et al. 2024) and its per-sample count.
PROD_OPS = ("gaussian_blur", "motion_blur", "gaussian_noise", "jpeg", "rain")


def prod_degradation(degradation: ml_collections.ConfigDict) -> None:
  """Sets `degradation` to PROD with Real-ESRGAN-like ranges (our choice: REFERENCE s9)."""
  degradation.kind = "prod"
  degradation.ops = PROD_OPS
  degradation.min_ops = 1
  degradation.max_ops = 3
  degradation.blur_sigma = (0.2, 3.0)
  degradation.blur_kernel_size = 21
  degradation.blur_anisotropic_prob = 0.5
  degradation.motion_length = (5.0, 21.0)
  degradation.noise_sigma = (1.0, 30.0)
  degradation.noise_gray_prob = 0.4
  degradation.jpeg_quality = (30, 95)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo",))
  config = common.base_config()
  config.job = "prod_nafnet"
  objectives.configure(config, "pixel")
  config.model.name = "nafnet"
  config.model.preset = "sidd_w32"
  prod_degradation(config.data.degradation)

  # Pre-training from scratch: every parameter trains; no base to load.
  config.lora.enabled = False
  config.base.checkpoint = ""
  config.base.num_steps = 0

  config.loss.kind = "psnr"
  config.optimizer.learning_rate = 1e-3
  config.optimizer.weight_decay = 0.0
  config.num_steps = 200_000
  config.batch_size = 32
  config.data.crop_size = 256
  config.checkpoint_every = 5000
  config.eval_every = 20_000

  if "demo" in variants:
    common.apply_demo(config)
    config.model.preset = "tiny"
    config.num_steps = 1500
    config.eval_every = 0
    config.checkpoint_every = 500
  return config
