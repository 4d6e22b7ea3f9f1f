"""Defaults shared by every sr_jax job config (the files in configs/ build on these).

Every key a job may set exists here, so the locked config rejects typos: an unknown
`--config.x.y=...` fails and lists the valid keys. Job files override values, never add keys.
"""

import ml_collections


def parse_variants(arg: str | None, allowed: tuple[str, ...]) -> set[str]:
  """Splits 'demo,foo' into {'demo', 'foo'}; an unknown variant is an error naming the valid ones."""
  variants = {v.strip() for v in (arg or "").split(",") if v.strip()}
  unknown = variants - set(allowed)
  if unknown:
    raise ValueError(
        f"Unknown config variant(s) {sorted(unknown)}; valid variants: {sorted(allowed)}.")
  return variants


def degradation_config() -> ml_collections.ConfigDict:
  """Synthetic degradation of a clean crop (see sr_jax/data/degradations.py)."""
  return ml_collections.ConfigDict(dict(
      # One of: 'noise' (Gaussian), 'blur' (isotropic Gaussian), 'noise_blur' (blur then
      # noise), 'bicubic' (MATLAB-style bicubic downscaling by `scale`, for SR models).
      kind="noise_blur",
      noise_sigma=(5.0, 25.0),  # On the 0..255 scale, drawn uniformly per image.
      blur_sigma=(0.5, 2.0),  # Pixels, drawn uniformly per image.
      blur_kernel_size=15,  # Odd; truncates the Gaussian.
      scale=4,  # For 'bicubic' only.
  ))


def base_config() -> ml_collections.ConfigDict:
  """The full key set with paper-scale defaults."""
  c = ml_collections.ConfigDict()
  c.job = ""
  c.mode = "train"  # 'train' (resumes; evaluates at the end) or 'eval' (latest checkpoint).
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name="nafnet",
      preset="sidd_w32",
      # Optional overrides of the preset's fields (0 / empty = keep the preset's value).
      width=0,
      dtype="float32",  # Compute dtype; parameters are always float32.
      conv_impl="auto",  # 'auto' picks the fastest formulation per platform; 'xla' or 'shifted'.
  ))

  c.data = ml_collections.ConfigDict(dict(
      source="embedded",  # 'embedded' (scikit-image photos) or 'folder'.
      train_dir="",
      eval_dir="",
      crop_size=256,
      augment=True,  # Random flips and 90-degree rotations.
      # An image smaller than the crop: 'skip' (warn and drop it) or 'error'.
      small_images="skip",
      num_workers=0,  # grain worker processes; 0 = in the main process.
      eval_max_size=0,  # Centre-crop eval images to at most this many pixels per side (0 = full).
      degradation=degradation_config(),
  ))

  c.lora = ml_collections.ConfigDict(dict(
      enabled=False,
      rank=8,
      alpha=8.0,
      targets=(r".*/kernel",),  # Regexes over 'module/sub/kernel' paths.
      # 'regex=rank' entries overriding the rank of matching kernels (0 freezes them).
      rank_overrides=(),
      extra_trainable=(),  # Regexes of base leaves trained fully (biases, norms, ...).
  ))

  c.base = ml_collections.ConfigDict(dict(
      checkpoint="",  # Directory holding a base checkpoint; empty = pre-train one in workdir/base.
      num_steps=0,
      learning_rate=1e-3,
      degradation=degradation_config(),
  ))

  c.loss = ml_collections.ConfigDict(dict(
      kind="psnr",  # 'l1', 'charbonnier' or 'psnr' (NAFNet's -PSNR loss).
      charbonnier_eps=1e-3,
  ))

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",
      learning_rate=1e-3,
      b1=0.9,
      b2=0.9,
      weight_decay=0.0,
      schedule="cosine",  # 'cosine' (to end_learning_rate) or 'constant'.
      end_learning_rate=1e-7,
      warmup_steps=0,
      grad_clip_norm=0.0,  # 0 = off. Clips the trainable gradients only.
  ))

  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,  # Devices on the 'data' axis; -1 = all.
  ))

  c.num_steps = 200_000
  c.batch_size = 32  # Global batch, split over the 'data' axis.
  c.log_every = 100
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.eval_every = 0  # 0 = only at the end.
  c.eval_checkpoint_step = -1  # For mode='eval': -1 = latest.
  c.num_image_summaries = 3
  return c


def apply_demo(c: ml_collections.ConfigDict) -> None:
  """Shrinks a job to the embedded photos on 2 CPU cores (minutes, not days)."""
  c.data.source = "embedded"
  c.data.crop_size = 64
  c.data.eval_max_size = 128
  c.batch_size = 8
  c.log_every = 25
  c.checkpoint_every = 100
