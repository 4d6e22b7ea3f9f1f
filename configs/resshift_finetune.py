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

Adaptation study (`study`, run by python -m sr_jax.study): the ResShift demo's export (trained
on the embedded photos: configs/resshift.py:demo) adapted to a folder of a new domain's images,
which the study splits once into fine-tuning, validation and test images; arms full
fine-tuning, uniform LoRA (5% of the UNet) and 'range' (full fine-tuning of timesteps 1-5 of
15 only, the base sampling the rest), each at its own rate chosen on validation, two seeds;
scored on the new domain and on a general set of photographs (forgetting):

  python -m sr_jax.study --config configs/resshift_finetune.py:study --workdir /tmp/rs_study \
      --config.base.checkpoint=/tmp/resshift_demo/export/params \
      --config.data.train_dir=/data/Manga109 --config.eval.general_set=/data/CBSD68
"""

import ml_collections

from configs import resshift
from sr_jax.config import config_base as common

RANGE_T_MAX = 5  # Of T = 15: the data end of the chain (noise std kappa sqrt(eta_t) <= ~0.7).


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo,lora'."""
  variants = common.parse_variants(arg, allowed=("demo", "lora", "range", "study"))
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
  if "study" in variants:
    adaptation_study(config)
  return config


def adaptation_study(config: ml_collections.ConfigDict) -> None:
  """The adaptation study at the size of 2 CPU cores (see the module docstring): the demo's
  chain (kappa 16, as configs/resshift.py:demo trains it), 300 steps per run."""
  resshift.apply_resshift_demo(config)
  resshift.apply_demo_schedule(config)  # The base's chain: fine-tuning must sample the same.
  config.job = "resshift_study"
  config.data.source = "folder"
  config.data.eval_crops = 1  # One 128-pixel centre crop per test image (LR 32).
  config.num_steps, config.checkpoint_every, config.log_every = 300, 300, 100
  config.ema.decay = 0.99  # A ~100-step horizon for 300 steps.
  config.optimizer = common.optimizer_config(name="adam", learning_rate=2e-4, b2=0.999,
                                             schedule="constant")
  config.lora.targets = (r".*/kernel",)
  config.lora.rank_overrides = ()
  s = config.study
  s.tasks, s.arms, s.objectives = ("domain",), ("full", "uniform", "range"), ()
  s.budget, s.curve_tasks, s.seeds, s.range_t_max = 0.05, (), (0, 1), RANGE_T_MAX
  s.full_learning_rates = (5e-5, 2e-4, 8e-4)  # Steps of 4: three runs span a factor of 16.
  s.lora_learning_rates = (2e-4, 1e-3, 5e-3)
  # The GAN transfer study's split of the same folder (one shuffle): 36 / 8 / 16, and the first
  # 12 photos of eval.general_set for the forgetting.
  s.base_images, s.train_images, s.val_images, s.test_images = 0, 36, 8, 16
  s.general_images = 12
  config.eval.general_set = ""  # A folder of photographs, given by the user.
