r"""ResShift x4 super-resolution: residual-shifting diffusion in pixel space, trained from scratch.

Yue, Wang and Loy 2023 (NeurIPS): a 15-step Markov chain from the bicubic-upsampled LR image
plus noise (x_T = y + kappa sqrt(eta_T) z) to the HR image, shifting the residual y - x0 while
removing the noise; an SR3 UNet predicts x0 from (y, x_t, the noise level), trained by its
mean squared error. The paper's x4 schedule (T = 15, kappa = 2, p = 0.3), Adam at 5e-5 and
batch 64 for 500k steps; the paper runs the chain in a VQGAN's latent space, which sr_jax does
not have: this job is its pixel-space variant, on 256 HR crops (LR 64) with the UNet of the
common SR3 implementation (`sr3_16_128` layout). Evaluation samples the 15 steps and reports
PSNR / SSIM on the Y channel (crop = scale) and LPIPS.

  python -m sr_jax.main --config configs/resshift.py --workdir /tmp/resshift \
      --config.data.source=folder --config.data.train_dir=/data/DIV2K_train_HR \
      --config.data.eval_dir=/data/DIV2K_valid_HR

Embedded demo (x4 on the scikit-image photos, 2 CPU cores; the tiny UNet, kappa 16, 4,500
steps, about 35 minutes alone):

  python -m sr_jax.main --config configs/resshift.py:demo --workdir /tmp/resshift_demo

Sample images with the export:

  python -m sr_jax.infer --checkpoint /tmp/resshift_demo/export/params --input lr/ --output sr/
"""

import ml_collections

from sr_jax import objectives
from sr_jax.config import config_base as common


def resshift_job(config: ml_collections.ConfigDict) -> None:
  """ResShift x4 at paper settings (pixel space): model, data, chain, optimizer, evaluation."""
  config.ema.decay = 0.999  # The EMA of weights the paper evaluates and releases.

  objectives.configure(config, "resshift")
  config.model.name = "sr3"
  config.model.preset = "sr3_16_128"
  config.model.dropout = 0.0
  config.data.degradation.kind = "bicubic"
  config.data.degradation.scale = 4
  config.data.crop_size = 256  # HR; y is the 64x64 LR crop upsampled to 256.
  config.base.degradation = ml_collections.ConfigDict(config.data.degradation.to_dict())
  config.batch_size = 64
  config.num_steps = 500_000
  config.optimizer = common.optimizer_config(name="adam", learning_rate=5e-5, b2=0.999,
                                             schedule="cosine", end_learning_rate=2e-5,
                                             warmup_steps=5000)
  config.resshift.num_steps = 15
  config.resshift.kappa = 2.0
  config.resshift.power = 0.3
  config.eval.y_channel = True
  config.eval.lpips = ("alex",)
  config.eval.consistency = True
  config.checkpoint_every = 10_000
  config.log_every = 200


def apply_resshift_demo(config: ml_collections.ConfigDict) -> None:
  """Shrinks the job to the embedded photos on 2 CPU cores: the `tiny` UNet, 64 -> 16 crops."""
  config.ema.decay = 0.995  # A horizon of ~200 steps: the init's weight in the EMA
  # after the demo's steps is under 0.1% (at the paper's decay it would still be 20-80%).

  common.apply_demo(config)
  config.model.preset = "tiny"
  config.data.crop_size = 64  # LR 16.
  config.data.eval_max_size = 128  # Held-out photos cropped to 128 (LR 32) ...
  config.data.eval_crops = 4  # ... 4 crops of each: 12, so one run's number means something.
  config.batch_size = 8
  config.num_steps = 1500
  config.optimizer = common.optimizer_config(name="adam", learning_rate=1e-3, b2=0.999,
                                             schedule="cosine", end_learning_rate=1e-5,
                                             warmup_steps=100)
  config.log_every = 100
  config.checkpoint_every = 500


def apply_demo_schedule(config: ml_collections.ConfigDict) -> None:
  """The demo's own chain and length: kappa 16 and 4,500 steps (the paper's kappa is 2).

  At the demo's size the sampled chain drifts: from x_t drawn given the HR image, every one of
  its x0 predictions beats bicubic, but from the chain's own states they get worse step by
  step (`python -m sr_jax.tools.resshift_curves`; docs/diffusion.md has the curves). A larger
  kappa hides the chain's state under more noise until its last steps, so the network leans on
  y and the drift shrinks: 15-step PSNR rises by about 0.3-0.6 dB per doubling of kappa from 2
  to 16 (the paper: kappa trades fidelity against realism). The fine-tuning demo keeps the
  paper's chain.
  """
  config.resshift.kappa = 16.0
  config.num_steps = 4500


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo",))
  config = common.base_config()
  config.job = "resshift"
  resshift_job(config)
  if "demo" in variants:
    apply_resshift_demo(config)
    apply_demo_schedule(config)
  return config
