r"""LoRA fine-tuning of NAFNet on a new degradation.

A NAFNet base restores one degradation (deblurring); LoRA adapters (rank 8 on every dense
conv, depthwise convs frozen, biases and norms tuned fully) adapt it to another (denoising),
training about 10% of the parameters.

Paper-scale (SIDD width-32 layout, your own images, a converted or pre-trained base):

  python -m sr_jax.main --config configs/lora_nafnet.py --workdir /tmp/lora_nafnet \
      --config.data.train_dir=/data/train --config.data.eval_dir=/data/val \
      --config.base.checkpoint=/ckpt/nafnet_base

Embedded demo (scikit-image's bundled photos, 2 CPU cores, about 2.5 minutes):

  python -m sr_jax.main --config configs/lora_nafnet.py:demo --workdir /tmp/lora_nafnet_demo

Expected demo result (about 2 minutes on 2 CPU cores), PSNR/SSIM on RGB of the three held-out
photos: noisy input 21.0 dB / 0.36; the base, trained only to deblur, 20.2 / 0.34; LoRA (rank 4,
9.8% of the width-16 NAFNet's parameters, 300 steps at 10x the shared rate) 29.5 / 0.74
(docs/scale_out.md's float32 rows).
"""

import ml_collections

from sr_jax import objectives
from sr_jax.config import config_base as common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo",))
  config = common.base_config()
  config.job = "lora_nafnet"
  objectives.configure(config, "pixel")

  config.model.name = "nafnet"
  config.model.preset = "sidd_w32"

  # The target task: denoising. The base was trained on something else (see config.base).
  config.data.degradation.kind = "noise"
  config.data.degradation.noise_sigma = (15.0, 35.0)

  config.lora.enabled = True  # At the default multiplier (3) of optimizer.learning_rate.
  config.lora.rank = 8
  config.lora.alpha = 8.0
  # Every kernel; depthwise convs are excluded by the model's registry entry.
  config.lora.targets = (r".*/kernel",)
  # The 3-channel output conv allows rank <= 3; a full update of it costs only 9*width*3
  # parameters, so it trains fully instead of carrying an adapter.
  config.lora.rank_overrides = ("ending/kernel=0",)
  # Biases, LayerNorm scale/bias and NAFNet's beta/gamma are ~0.5% of NAFNet: tune them fully.
  config.lora.extra_trainable = (r".*/bias", r".*/scale", r".*/beta", r".*/gamma",
                                 r"ending/kernel")

  # The base: a checkpoint directory (from sr_jax.convert or an earlier run), or, when empty,
  # a base pre-trained here on `base.degradation` for `base.num_steps` steps.
  config.base.checkpoint = ""
  config.base.num_steps = 200_000
  config.base.learning_rate = 1e-3
  config.base.degradation.kind = "blur"
  config.base.degradation.blur_sigma = (1.0, 2.0)

  config.optimizer.learning_rate = 2e-4
  config.num_steps = 10_000
  config.batch_size = 32
  config.data.crop_size = 256

  if "demo" in variants:
    common.apply_demo(config)
    config.model.preset = "tiny"
    config.lora.rank = 4
    config.lora.alpha = 4.0
    config.base.num_steps = 400
    config.num_steps = 300
    config.optimizer.learning_rate = 1e-3
    # Chosen on 2 held-out training photos by `python -m sr_jax.tools.lora_rate` (docs/study.md:
    # validation PSNR 26.51 / 27.62 / 28.40 / 28.37 dB at multipliers 1 / 3 / 10 / 30).
    config.lora.learning_rate_multiplier = 10.0
    config.eval_every = 100  # A held-out PSNR curve in TensorBoard (3 small images).
  return config
