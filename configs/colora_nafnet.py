r"""CoLoRA on NAFNet (Park et al. 2024): a PROD base adapted to an unseen task, ~7% of parameters.

The job: pre-train (or load) a PROD base -> a short full fine-tune ("probe") on the task ->
FAIG contributions of every layer between the base and the probe -> LoRA ranks per layer from
those contributions under a 7% parameter budget (sr_jax/adapt/colora.py) -> CoLoRA fine-tuning ->
evaluation. The task here is dehazing (one of the paper's six); the PROD base saw blur, noise,
JPEG and rain, never haze. colora.arms adds the comparison arms at equal steps and data:
'full' fine-tuning and 'uniform' LoRA at the same budget.

Paper-scale (SIDD width-32 layout; your own clean images; 16 fine-tuning images):

  python -m sr_jax.main --config configs/colora_nafnet.py --workdir /tmp/colora_nafnet \
      --config.data.source=folder --config.data.train_dir=/data/clean/train \
      --config.data.eval_dir=/data/clean/val --config.base.checkpoint=/ckpt/prod/export/params \
      --config.colora.arms=full,uniform,colora

Embedded demo (scikit-image's bundled photos, 2 CPU cores; base + CoLoRA):

  python -m sr_jax.main --config configs/colora_nafnet.py:demo --workdir /tmp/colora_demo

and with every arm (full, uniform LoRA, CoLoRA):

  python -m sr_jax.main --config configs/colora_nafnet.py:demo_ablation --workdir /tmp/colora_abl

The adaptation study (every arm at its own learning rate, chosen on a validation split; three
unseen tasks; several seeds; a budget curve), on the embedded photos or on folders of photos
(a base set and a fine-tuning set from data.train_dir, the test set from data.eval_dir):

  python -m sr_jax.study --config configs/colora_nafnet.py:study --workdir /tmp/study \
      --config.data.source=folder --config.data.train_dir=/data/Sun_Hays80 \
      --config.data.eval_dir=/data/CBSD68

Expected demo results (about 6 minutes for :demo, 9 for :demo_ablation from scratch; PSNR/SSIM
on RGB of the three held-out photos at 128x128): hazy input 13.36 dB / 0.687, PROD base 13.43 /
0.662, CoLoRA (7.00% of the parameters, learning rate 3e-3) 22.64 / 0.773; with :demo_ablation
also full fine-tuning (1e-3) 21.09 / 0.788 and uniform LoRA at the same budget (3e-3) 21.58 /
0.770. The LoRA arms train at optimizer.learning_rate x lora.learning_rate_multiplier (3, the
adaptation study's choice on its validation split).
"""

import ml_collections

from configs import prod_nafnet
from sr_jax import objectives
from sr_jax.config import config_base as common


def haze_colora_job(config: ml_collections.ConfigDict) -> None:
  """The CoLoRA job on the dehazing task, for any backbone (colora_restormer uses it)."""
  # The new task: haze (atmospheric scattering), which PROD never applied.
  config.data.degradation.kind = "chain"
  config.data.degradation.ops = ("haze",)
  config.data.degradation.haze_beta = (0.5, 2.0)
  config.data.num_train_images = 16

  # The base: PROD pre-training unless base.checkpoint names one.
  config.base.checkpoint = ""
  prod_nafnet.prod_degradation(config.base.degradation)

  config.colora.enabled = True
  config.colora.arms = ("colora",)
  config.colora.probe_steps = 1000
  config.colora.faig_steps = 100
  config.colora.faig_images = 16
  config.colora.budget = 0.07
  config.colora.alpha = 1.0
  config.colora.beta = 0.1
  config.lora.targets = (r".*/kernel",)


def colora_demo(config: ml_collections.ConfigDict, variants: set[str]) -> None:
  """Shrinks the job to the embedded photos on 2 CPU cores (:demo, :demo_ablation)."""
  if variants & {"demo", "demo_ablation"}:
    common.apply_demo(config)
    config.data.num_train_images = 0  # All 9 embedded training photos.
    config.colora.probe_steps = 150
    config.colora.probe_learning_rate = 1e-3
    config.colora.faig_images = 8
    config.optimizer.learning_rate = 1e-3
    config.num_steps = 400
    config.checkpoint_every = 200
    config.eval_every = 100  # A held-out PSNR curve in TensorBoard.
    config.data.eval_crops = 4  # 12 held-out crops (4 from each of 3 photos), not 3.
  if "demo_ablation" in variants:
    config.colora.arms = ("full", "uniform", "colora")


def study_settings(config: ml_collections.ConfigDict, quick: bool) -> None:
  """The adaptation study (python -m sr_jax.study): a tiny NAFNet PROD base, three unseen tasks,
  every arm at its own learning rate chosen on a validation split (see sr_jax/study)."""
  common.apply_demo(config)
  config.model.preset = "tiny"
  config.base.num_steps = 2000
  config.colora.probe_steps, config.colora.probe_learning_rate = 150, 1e-3
  config.colora.faig_images = 8
  config.num_steps, config.checkpoint_every = 300, 300
  config.optimizer.learning_rate = 1e-3
  config.study.tasks = ("haze", "low_light", "poisson_noise")
  config.study.base_images, config.study.train_images, config.study.val_images = 48, 16, 8
  if quick:  # For tests: micro model, one task, seconds per run.
    config.model.preset, config.data.crop_size, config.data.eval_max_size = "micro", 32, 48
    config.base.num_steps, config.num_steps, config.checkpoint_every = 4, 2, 2
    config.colora.probe_steps, config.colora.faig_steps, config.colora.faig_images = 2, 2, 8
    config.study.tasks, config.study.curve_tasks = ("haze",), ("haze",)
    config.study.curve_budgets, config.study.seeds = (0.15,), (0, 1)
    config.study.full_learning_rates, config.study.lora_learning_rates = (1e-3, 3e-3), (3e-3, 1e-2)
    config.study.val_images, config.log_every = 2, 1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo", "demo_ablation", "study",
                                                 "study_quick"))
  config = common.base_config()
  config.job = "colora_nafnet"
  objectives.configure(config, "pixel")
  config.model.name = "nafnet"
  config.model.preset = "sidd_w32"
  haze_colora_job(config)
  config.base.num_steps = 200_000
  config.base.learning_rate = 1e-3
  config.colora.probe_learning_rate = 2e-4
  config.optimizer.learning_rate = 2e-4
  config.num_steps = 10_000
  config.batch_size = 16
  config.data.crop_size = 256

  colora_demo(config, variants)
  if variants & {"demo", "demo_ablation"}:
    config.model.preset = "tiny"
    config.base.num_steps = 1500
  if variants & {"study", "study_quick"}:
    study_settings(config, quick="study_quick" in variants)
  return config
