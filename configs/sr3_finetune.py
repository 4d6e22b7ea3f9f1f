r"""SR3 fine-tuning on a new domain with few images and steps: full, LoRA or part of the chain.

The questions of Yin's limited-fine-tuning study of SR3, as one job per arm: does an SR3 trained on one domain (faces) adapt to a
new one (e.g. anime faces) with N images (`--config.data.num_train_images=N`) and S steps
(`--config.num_steps=S`); must every timestep be fine-tuned, or only the data end of the
chain (variant `range`: training timesteps [1, 500] of 2000, and the base model samples the
other steps); and does fine-tuning forget the original domain (`eval.general_set`, scored for
the base and the tuned model in the same table; `python -m sr_jax.forgetting --workdir W`
prints the change). Variants combine: `lora` (rank-4 adapters on every conv, linear and
attention projection of the UNet, base frozen), `range`, `lora,range`; none = full
fine-tuning.

  python -m sr_jax.main --config configs/sr3_finetune.py:lora --workdir /tmp/sr3_anime \
      --config.base.checkpoint=/ckpt/sr3_16_128 \
      --config.data.source=folder --config.data.train_dir=/data/anime_faces/train \
      --config.data.eval_dir=/data/anime_faces/val --config.eval.general_set=/data/celebahq_val \
      --config.data.num_train_images=100 --config.num_steps=2000

Embedded demo (2 CPU cores): a tiny SR3 pre-trained on the photos in WORKDIR/base (or given
with --config.base.checkpoint) is fine-tuned on scanned text ('page') and scored on another
text image and on the photos:

  python -m sr_jax.main --config configs/sr3_finetune.py:demo --workdir /tmp/sr3_ft_full
  python -m sr_jax.main --config configs/sr3_finetune.py:demo,lora --workdir /tmp/sr3_ft_lora \
      --config.base.checkpoint=/tmp/sr3_ft_full/base/export/params
  python -m sr_jax.main --config configs/sr3_finetune.py:demo,range --workdir /tmp/sr3_ft_range \
      --config.base.checkpoint=/tmp/sr3_ft_full/base/export/params

The SR3 demo's own export (`configs/sr3.py:demo`, the same photos and steps) serves as the base
too: pass it as --config.base.checkpoint to every arm.
"""

import ml_collections

from configs import sr3
from sr_jax.config import config_base as common

RANGE_T_MAX = 500  # Of T = 2000: the data end of the chain, where gamma_t > ~0.3.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo,lora'."""
  variants = common.parse_variants(arg, allowed=("demo", "lora", "range"))
  config = common.base_config()
  config.job = "sr3_finetune"
  sr3.sr3_job(config)
  # The base is a converted or earlier SR3 (--config.base.checkpoint); fine-tuning is short.
  config.base.num_steps = 0
  config.num_steps = 2000
  # A 1,000-step horizon for 2,000 steps (the pre-training decay, 0.9999 for SR3, would leave
  # the base 82% of the EMA at the end).
  config.ema.decay = 0.999
  config.batch_size = 16
  config.optimizer = common.optimizer_config(name="adam", learning_rate=1e-5, b2=0.999,
                                             schedule="constant")
  config.eval.general_set = "embedded"
  if "lora" in variants:
    config.lora.enabled = True
    # The adapters train at the default multiplier of the shared rate (lora.learning_rate_
    # multiplier = 3). A job fine-tuned on one page cannot hold an image out to choose it; the
    # ResShift adaptation study, which can, chose its LoRA rate 25x full fine-tuning's.
    config.lora.rank = 4
    config.lora.alpha = 4.0
    config.lora.targets = (r".*/kernel",)
    config.lora.rank_overrides = ("final_conv/block_3/kernel=3",)  # 3 output channels.
  if "range" in variants:
    config.diffusion.t_min, config.diffusion.t_max = 1, RANGE_T_MAX
    config.diffusion.base_outside_range = True
  if "demo" in variants:
    sr3.apply_sr3_demo(config)
    base_steps = config.num_steps
    config.base.num_steps = base_steps  # Pre-train the stand-in base on the photos.
    config.base.learning_rate = config.optimizer.learning_rate
    config.base.embedded_set = "photos"
    config.data.embedded_set = "documents"
    # The base's stage keeps the demo's horizon; 300 fine-tuning steps want a ~100-step one
    # (the base's weight in the fine-tuned EMA ends near 5%).
    config.base.ema_decay, config.ema.decay = config.ema.decay, 0.99
    # Both sets centre-cropped to 128 (LR 32): attention at full photo size would not fit.
    config.data.eval_max_size = 128
    config.eval.general_set = "embedded"
    config.num_steps = 300
    config.optimizer.learning_rate = 1e-4
    config.optimizer.warmup_steps = 0
    config.checkpoint_every = 300
  return config
