r"""ResShift fine-tuning on a new domain: full, LoRA, or only part of the 15-step chain.

One job per arm, as configs/sr3_finetune.py asks of SR3: does a ResShift model trained on one
domain adapt to another with few images and steps; must every timestep be fine-tuned, or only
the data end of the chain (variant `range`: timesteps [1, 5] of 15, the base sampling the
other ten); and does fine-tuning forget the original domain (`eval.general_set`, scored for the
base and the tuned model in one table; `python -m sr_jax.forgetting --workdir W` prints the
change). Variants combine: `lora` (rank-4 adapters on every kernel of the UNet, base frozen),
`range`, `lora,range`; none = full fine-tuning.

  python -m sr_jax.main --config configs/resshift_finetune.py:lora --workdir /tmp/rs_new \
      --config.base.checkpoint=/tmp/resshift/export/params \
      --config.data.source=folder --config.data.train_dir=/data/new/train \
      --config.data.eval_dir=/data/new/test --config.eval.general_set=/data/original/test

Choose each arm's learning rate on a validation split carved from the training images
(`--config.data.val_images=N --config.data.eval_split=val`), then report on the held-out
images (`--config.mode=eval --config.data.eval_split=eval`, or sr_jax.forgetting).

Embedded demo (2 CPU cores): a tiny ResShift pre-trained on the photos in WORKDIR/base (or
given with --config.base.checkpoint) is fine-tuned on scanned text ('page') and scored on
another text image and on the photos:

  python -m sr_jax.main --config configs/resshift_finetune.py:demo --workdir /tmp/rs_ft_full
  python -m sr_jax.main --config configs/resshift_finetune.py:demo,lora --workdir /tmp/rs_ft_lora \
      --config.base.checkpoint=/tmp/rs_ft_full/base/export/params
"""

import ml_collections

from configs import resshift
from sr_jax import config_base as common

RANGE_T_MAX = 5  # Of T = 15: the data end of the chain (noise std kappa sqrt(eta_t) <= ~0.7).


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo,lora'."""
  variants = common.parse_variants(arg, allowed=("demo", "lora", "range"))
  config = common.base_config()
  config.job = "resshift_finetune"
  resshift.resshift_job(config)
  # The base is an earlier ResShift (--config.base.checkpoint); fine-tuning is short.
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
    config.lora.rank = 4
    config.lora.alpha = 4.0
    config.lora.targets = (r".*/kernel",)
    config.lora.rank_overrides = ("final_conv/block_3/kernel=3",)  # 3 output channels.
    config.optimizer.learning_rate = 1e-4  # Adapters start at zero: a higher rate than full.
  if "range" in variants:
    config.resshift.t_min, config.resshift.t_max = 1, RANGE_T_MAX
    config.resshift.base_outside_range = True
  if "demo" in variants:
    resshift.apply_resshift_demo(config)
    config.base.num_steps = config.num_steps  # Pre-train the stand-in base on the photos ...
    config.base.learning_rate = config.optimizer.learning_rate  # ... as the demo trains.
    config.base.embedded_set = "photos"
    config.data.embedded_set = "documents"
    # The base's stage keeps the demo's horizon; 300 fine-tuning steps want a ~100-step one
    # (the base's weight in the fine-tuned EMA ends near 5%).
    config.base.ema_decay, config.ema.decay = config.ema.decay, 0.99
    config.eval.general_set = "embedded"
    config.num_steps = 300
    config.optimizer = common.optimizer_config(
        name="adam", learning_rate=1e-3 if "lora" in variants else 2e-4, b2=0.999,
        schedule="constant")
    config.checkpoint_every = 300
  return config
