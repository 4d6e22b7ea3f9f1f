r"""SR3 16 -> 128 (x8) diffusion super-resolution, trained from scratch.

Saharia et al. 2021 with the common PyTorch implementation's UNet (Janspiry's
`sr3_16_128`: 64 channels, multipliers 1-2-4-8-8, two residual blocks per level, attention at
16x16, dropout 0.2, 97.8M parameters) and noise schedule (linear betas 1e-6 -> 1e-2 over
T = 2000). The LR face is upscaled with MATLAB's bicubic and concatenated to the noisy image;
the UNet predicts the noise from the continuous noise level, with an L1 loss. Adam at 1e-4
after a 10k-step warm-up, batch 256 and 1M steps as the paper (the common implementation uses
batch 4 on one GPU). Evaluation samples with DDPM on a 100-step chain (the paper uses at most
100 refinement steps; `--config.diffusion.sample_steps=0` runs all 2000) and reports PSNR/SSIM
(RGB), LPIPS and SR3's consistency.

  python -m sr_jax.main --config configs/sr3.py --workdir /tmp/sr3 \
      --config.data.source=folder --config.data.train_dir=/data/ffhq \
      --config.data.eval_dir=/data/celebahq_val

Embedded demo (the `tiny` UNet, 16 -> 64 on the scikit-image photos, 2 CPU cores):

  python -m sr_jax.main --config configs/sr3.py:demo --workdir /tmp/sr3_demo

Convert a checkpoint of the common implementation (`I640000_E37_gen.pth`) and evaluate it:

  python -m sr_jax.convert --arch sr3 --src I640000_E37_gen.pth --dst /ckpt/sr3_16_128
"""

import ml_collections

from sr_jax import objectives
from sr_jax.config import config_base as common


def sr3_job(config: ml_collections.ConfigDict) -> None:
  """SR3 16 -> 128 at paper scale: model, data, noise schedule, optimizer and evaluation."""
  config.ema.decay = 0.9999  # The EMA of weights the paper evaluates and releases.

  config.model.name = "sr3"
  config.model.preset = "sr3_16_128"
  config.data.degradation.kind = "bicubic"
  config.data.degradation.scale = 8
  config.data.crop_size = 128  # HR size; the condition is the 16x16 LR upscaled to 128.
  config.base.degradation = ml_collections.ConfigDict(config.data.degradation.to_dict())
  config.batch_size = 256
  config.num_steps = 1_000_000
  config.optimizer = common.optimizer_config(name="adam", learning_rate=1e-4, b2=0.999,
                                             schedule="constant", warmup_steps=10_000)
  objectives.configure(config, "diffusion")
  config.diffusion.schedule = "linear"
  config.diffusion.num_timesteps = 2000
  config.diffusion.beta_start = 1e-6
  config.diffusion.beta_end = 1e-2
  config.diffusion.loss = "l1"
  config.diffusion.sampler = "ddpm"
  config.diffusion.sample_steps = 100
  config.eval.lpips = ("alex",)
  config.eval.consistency = True
  config.checkpoint_every = 10_000
  config.log_every = 200


def apply_sr3_demo(config: ml_collections.ConfigDict) -> None:
  """Shrinks an SR3 job to the embedded photos on 2 CPU cores: the `tiny` UNet, 16 -> 64."""
  config.ema.decay = 0.995  # A horizon of ~200 steps: the init's weight in the EMA
  # after the demo's steps is under 0.1% (at the paper's decay it would still be 20-80%).

  common.apply_demo(config)
  config.model.preset = "tiny"
  config.data.degradation.scale = 4
  config.base.degradation.scale = 4
  config.data.crop_size = 64
  config.data.eval_max_size = 128  # Held-out photos centre-cropped to 128 (LR 32).
  config.batch_size = 8
  config.num_steps = 2000
  config.optimizer = common.optimizer_config(name="adam", learning_rate=2e-4, b2=0.999,
                                             schedule="constant", warmup_steps=100)
  config.diffusion.sampler = "ddim"  # 50 deterministic steps: seconds per image on a CPU.
  config.diffusion.sample_steps = 50
  config.log_every = 100
  config.checkpoint_every = 500


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo",))
  config = common.base_config()
  config.job = "sr3"
  sr3_job(config)
  if "demo" in variants:
    apply_sr3_demo(config)
  return config
