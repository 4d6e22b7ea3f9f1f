r"""CoLoRA on Restormer (the CoLoRA paper's transformer backbone): the job of colora_nafnet.py.

The job: a base (a converted official Restormer, or PROD pre-training here) -> a short full
fine-tune ("probe") on the task -> FAIG contributions of every layer -> LoRA ranks per layer
under a 7% parameter budget -> CoLoRA fine-tuning -> evaluation (sr_jax/jobs/colora_job.py). The
depthwise convs (qkv_dwconv, ffn.dwconv) get no adapter; biases, LayerNorms and the attention
temperatures are tuned fully within the budget (colora.tune_extras). The task is dehazing,
which the PROD base never saw. Restormer's own recipe: AdamW (0.9, 0.999), weight decay 1e-4,
L1 loss.

Paper-scale, from an official checkpoint (converted once; it records the architecture):

  python -m sr_jax.convert --arch restormer --src motion_deblurring.pth --dst /ckpt/restormer
  python -m sr_jax.main --config configs/colora_restormer.py --workdir /tmp/colora_restormer \
      --config.base.checkpoint=/ckpt/restormer --config.data.source=folder \
      --config.data.train_dir=/data/clean/train --config.data.eval_dir=/data/clean/val \
      --config.colora.arms=full,uniform,colora

(a real-denoising checkpoint is BiasFree: add --config.model.preset=real_denoising). Without
base.checkpoint the base is PROD-pre-trained in the workdir first.

Embedded demo (scikit-image's bundled photos, 2 CPU cores; a micro Restormer):

  python -m sr_jax.main --config configs/colora_restormer.py:demo --workdir /tmp/colora_rest
  python -m sr_jax.main --config configs/colora_restormer.py:demo_ablation --workdir /tmp/rest_abl

Expected demo results (:demo_ablation 8.5 minutes from scratch on 2 CPU cores: 1000 PROD steps,
a 150-step probe, FAIG with M=100 on 8 crops, 400 steps per arm; PSNR/SSIM on RGB of 12
held-out 128x128 crops of the three photos; docs/colora.md): hazy input 13.99 dB / 0.727, PROD
base 13.99 / 0.710, CoLoRA (6.99% of the parameters) 18.19 / 0.739, uniform LoRA at the same
budget 18.01 / 0.662, full fine-tuning 19.63 / 0.806. The micro Restormer (dim 8, 208k parameters) is
far weaker than the tiny NAFNet of colora_nafnet's demo on this task.
"""

import ml_collections

from configs import colora_nafnet
from sr_jax import objectives
from sr_jax.config import config_base as common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo", "demo_ablation"))
  config = common.base_config()
  config.job = "colora_restormer"
  objectives.configure(config, "pixel")
  config.model.name = "restormer"
  config.model.preset = "default"
  colora_nafnet.haze_colora_job(config)  # The same task, stages and budget as NAFNet's.
  # The adapters' rate, measured on the demo (`python -m sr_jax.tools.lora_rate`, 2 held-out
  # training photos; docs/study.md): best at 1e-4, ten times below that demo's shared 1e-3 and
  # equal to Restormer's own fine-tuning rate here, hence 1x at paper scale.
  config.lora.learning_rate_multiplier = 1.0
  config.base.num_steps = 300_000
  config.base.learning_rate = 3e-4
  config.colora.probe_learning_rate = 1e-4
  config.colora.faig_batch = 4  # Restormer's activations are large: FAIG in chunks of 4 crops.

  # Restormer's own recipe.
  config.loss.kind = "l1"
  config.optimizer.learning_rate = 1e-4
  config.optimizer.b1, config.optimizer.b2 = 0.9, 0.999
  config.optimizer.weight_decay = 1e-4
  config.optimizer.end_learning_rate = 1e-6
  config.num_steps = 10_000
  config.batch_size = 8
  config.data.crop_size = 128

  colora_nafnet.colora_demo(config, variants)
  if variants & {"demo", "demo_ablation"}:
    config.model.preset = "micro"
    config.base.num_steps = 1000
    config.base.learning_rate = 1e-3
    config.colora.faig_batch = 0
    # Validation PSNR 18.19 / 21.42 / 20.98 / 19.39 / 18.93 / 18.51 dB at multipliers 0.03 /
    # 0.1 / 0.3 / 1 / 3 / 10 of the demo's shared 1e-3 (docs/study.md).
    config.lora.learning_rate_multiplier = 0.1
  return config
