r"""ESRGAN domain transfer with LoRA: adapt a pre-trained ESRGAN to a new domain.

The generator's weights stay frozen; LoRA adapters of rank 4 on every generator conv (the
3-channel output conv allows at most rank 3) are trained with the full ESRGAN GAN objective
(pixel, perceptual, relativistic GAN; a discriminator trained from scratch) on a folder of
target-domain images. The run reports, before and after, PSNR/SSIM/LPIPS on held-out target
images and on a general set (what the transfer forgets), with the trainable share.

Paper scale (a converted ESRGAN, e.g. xinntao's RRDB_ESRGAN_x4.pth; aerial target images;
Set14 as the general set):

  python -m sr_jax.convert --arch rrdbnet --src RRDB_ESRGAN_x4.pth --dst /ckpt/esrgan_x4
  python -m sr_jax.main --config configs/esrgan_lora.py --workdir /tmp/esrgan_lora \
      --config.base.checkpoint=/ckpt/esrgan_x4 \
      --config.data.source=folder --config.data.train_dir=/data/floodnet/train \
      --config.data.eval_dir=/data/floodnet/val --config.eval.general_set=/data/Set14/GTmod12

Embedded demo (2 CPU cores): a small RRDBNet is first trained here on the embedded photos (L1,
the PSNR-oriented stage: a stand-in for a downloaded ESRGAN), then adapted with LoRA and the GAN
objective to scanned text (scikit-image's 'page'), and scored on another text image ('text')
and on the held-out photos:

  python -m sr_jax.main --config configs/esrgan_lora.py:demo --workdir /tmp/esrgan_lora_demo

Transfer study (`transfer`, run by python -m sr_jax.study): a base trained on photographs
(`configs/esrgan.py:photo_base`: the L1 stage, then the GAN stage) adapted to a folder of a new
domain's images, which the study splits once into fine-tuning, validation and test images. Arms:
full fine-tuning and uniform LoRA at a fifth of the generator's parameters, each with the L1
('+pixel') and the GAN ('+gan') objective, each at its own learning rate chosen on validation,
two seeds; scored on the new domain's test images and on a general set of photographs (what
the transfer forgets) with PSNR/SSIM (Y, crop 4), LPIPS-alex and NIQE:

  python -m sr_jax.main --config configs/esrgan.py:photo_base --workdir /tmp/photo_base \
      --config.data.source=folder --config.data.train_dir=/data/Sun_Hays80 \
      --config.data.eval_dir=/data/CBSD68
  python -m sr_jax.study --config configs/esrgan_lora.py:transfer --workdir /tmp/transfer \
      --config.base.checkpoint=/tmp/photo_base/export/params \
      --config.data.train_dir=/data/Manga109 --config.eval.general_set=/data/CBSD68
"""

import ml_collections

from configs import esrgan
from sr_jax.config import config_base as common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo", "transfer"))
  config = common.base_config()
  config.job = "esrgan_lora"
  esrgan.sr_gan_job(config, "rrdbnet", "x4")

  config.lora.enabled = True  # At the default multiplier (3) of the full fine-tuning rate.
  config.lora.rank = 4
  config.lora.alpha = 4.0
  config.lora.targets = (r".*/kernel",)
  config.lora.rank_overrides = ("conv_last/kernel=3",)  # 64*9 -> 3 channels: rank <= 3.
  config.lora.extra_trainable = ()  # Biases stay frozen: only the adapters train.

  # The base is a converted ESRGAN (--config.base.checkpoint); nothing is pre-trained here.
  config.base.num_steps = 0
  config.num_steps = 5000
  config.optimizer = common.optimizer_config(name="adam", learning_rate=1e-4, b2=0.999,
                                             schedule="constant")
  config.gan.d_optimizer = common.optimizer_config(name="adam", learning_rate=1e-4, b2=0.999,
                                                   schedule="constant")
  config.eval.general_set = "embedded"

  if "demo" in variants:
    esrgan.apply_gan_demo(config)
    config.data.embedded_set = "documents"
    config.base.embedded_set = "photos"  # The stand-in base learns natural photos.
    config.eval.general_set = "embedded"
    config.data.eval_max_size = 0  # 'text' is 172x448: score all of it.
    config.lora.alpha = 4.0
    config.num_steps = 150
    # The rates the transfer study chose on its validation split for this small RRDBNet:
    # full fine-tuning 1e-3 (L1), LoRA 3e-3 (both objectives), i.e. the default multiplier.
    # One page cannot hold an image out to choose on here.
    config.optimizer.learning_rate = 1e-3
  if "transfer" in variants:
    transfer_study(config)
  return config


def transfer_study(config: ml_collections.ConfigDict) -> None:
  """The GAN transfer study at the size of 2 CPU cores (python -m sr_jax.study; see the module
  docstring): the demo's small RRDBNet, 64-pixel crops, 200 steps per run."""
  esrgan.apply_gan_demo(config)
  config.job = "esrgan_transfer"
  config.data.source = "folder"
  # Centre crops of 384 (LR 96): NIQE needs several 96-pixel blocks after the 4-pixel border.
  config.data.eval_max_size = 384
  config.eval.niqe = True
  config.num_steps = 200
  config.checkpoint_every = 200
  config.log_every = 50
  s = config.study
  s.tasks, s.arms, s.objectives = ("domain",), ("full", "uniform"), ("pixel", "gan")
  s.budget, s.curve_tasks, s.seeds = 0.2, (), (0, 1)  # LoRA at a fifth of the parameters.
  s.full_learning_rates = (1e-4, 3e-4, 1e-3, 3e-3)
  s.lora_learning_rates = (3e-4, 1e-3, 3e-3, 1e-2)
  # One folder of the new domain (data.train_dir), split once: 36 to fine-tune on, 8 to choose
  # rates on, 16 to report; the first 12 photos of eval.general_set score the forgetting.
  s.base_images, s.train_images, s.val_images, s.test_images = 0, 36, 8, 16
  s.general_images = 12
  config.eval.general_set = ""  # A folder of photographs (the base's domain), given by the user.
