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
  """How a clean crop becomes a model input (sr_jax/data/degradations.py, sr_jax/data/ops.py).

  Ranges (lo, hi) are drawn uniformly per sample (poisson_peak log-uniformly); lo == hi fixes
  a value. Pixel values are on the 0..255 scale where noted, lengths in pixels.
  """
  return ml_collections.ConfigDict(dict(
      # Shorthands: 'noise' (Gaussian), 'blur' (Gaussian), 'noise_blur' (blur then noise),
      # 'bicubic' (MATLAB bicubic downscaling by `scale` only), 'none'.
      # Op chains over `ops`: 'chain' (all of them, in the listed order), 'prod' (PROD: a random
      # subset of min_ops..max_ops ops in a random order), 'fixed' (a random subset in the listed
      # order) and 'single' (one random op): the last two are PROD's ablation baselines.
      kind="noise_blur",
      ops=("gaussian_blur", "motion_blur", "gaussian_noise", "jpeg", "rain"),  # The ops of a chain.
      min_ops=1,  # Fewest ops a 'prod' or 'fixed' chain draws.
      max_ops=3,  # Most ops a 'prod' or 'fixed' chain draws.
      # Super-resolution: scale > 1 downscales the (modcropped) clean image with `resize`
      # ('bicubic' = MATLAB's antialiased imresize, 'bilinear', 'area', 'nearest'), rounds it to
      # 8-bit levels like stored LR files, then applies the ops to the LR image.
      scale=1,  # Super-resolution factor (1 = restoration at the same size).
      resize="bicubic",  # How the LR image is made: bicubic, bilinear, area or nearest.
      blur_sigma=(0.5, 2.0),  # Gaussian blur std (pixels).
      blur_kernel_size=15,  # Odd; the support of Gaussian and motion blur kernels.
      blur_anisotropic_prob=0.0,  # Chance that a Gaussian blur is anisotropic (rotated).
      motion_length=(5.0, 15.0),  # Motion-blur streak length; at most blur_kernel_size.
      motion_angle=(0.0, 180.0),  # Motion-blur direction, degrees.
      noise_sigma=(5.0, 25.0),  # Gaussian noise std, 0..255 scale.
      noise_gray_prob=0.0,  # Chance that the noise is identical in all channels.
      poisson_peak=(30.0, 3000.0),  # Photons at white (Poisson shot noise); log-uniform.
      jpeg_quality=(30, 95),  # Integer JPEG quality (Pillow's encoder).
      rain_density=(0.002, 0.01),  # Rain streak seeds per pixel.
      rain_length=(10.0, 30.0),  # Rain streak length (pixels).
      rain_angle=(-20.0, 20.0),  # Rain streak angle, degrees from vertical.
      rain_intensity=(0.4, 0.9),  # Peak brightness a streak adds.
      haze_beta=(0.5, 2.5),  # Scattering coefficient: transmission exp(-beta * depth).
      haze_airlight=(0.7, 1.0),  # Atmospheric light (brightness of the haze).
      lowlight_exposure=(0.1, 0.5),  # Multiplicative exposure after the gamma curve.
      lowlight_gamma=(1.2, 2.0),  # Gamma curve that darkens mid-tones.
      lowlight_noise=(2.0, 10.0),  # Read-noise std after darkening, 0..255 scale.
  ))


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """An optimizer and its learning-rate schedule (sr_jax/objectives/step.py)."""
  return ml_collections.ConfigDict(dict(dict(
      name="adamw",  # 'adamw' or 'adam'.
      learning_rate=1e-3,  # Peak learning rate of the schedule.
      b1=0.9,  # Adam's first-moment decay.
      b2=0.9,  # Adam's second-moment decay.
      weight_decay=0.0,  # Decoupled weight decay (adamw only).
      # 'cosine' (to end_learning_rate), 'constant', or 'multistep' (times gamma at each of
      # milestones, in steps).
      schedule="cosine",
      end_learning_rate=1e-7,  # Where the cosine schedule ends.
      milestones=(),  # Steps where a multistep schedule multiplies the rate by gamma.
      gamma=0.5,  # Multistep factor.
      warmup_steps=0,  # Linear warm-up from 0 over this many steps.
      grad_clip_norm=0.0,  # Clip the trainable gradients' global norm to this; 0 = off.
      # How optimizer moments are stored between steps: 'float32' or 'bfloat16' (half the
      # memory; the update is still computed in float32).
      state_dtype="float32",
  ), **overrides))


def eval_config() -> ml_collections.ConfigDict:
  """How held-out images are scored (sr_jax/quality/evaluate.py)."""
  return ml_collections.ConfigDict(dict(
      crop_border=-1,  # Pixels dropped on every side; -1 = the SR scale (0 for restoration).
      y_channel=False,  # PSNR/SSIM on MATLAB's Y channel (the SR papers' protocol) or RGB.
      lpips=(),  # LPIPS networks to report: ('alex',), ('alex', 'vgg').
      rmse=False,  # Root-mean-square error on the uint8 scale, same protocol as PSNR.
      niqe=False,  # No-reference NIQE (BasicSR's, lower is better) of the outputs.
      # SR consistency: MSE between the LR input and the output downscaled the data's way
      # (MATLAB bicubic), on the [0, 1] scale x 1e5, as SR3 reports it.
      consistency=False,
      # A second held-out set the base and the tuned model are also scored on (does a domain
      # transfer forget?): 'embedded' (the embedded photos), a folder of clean images, or ''.
      general_set="",
  ))


def base_config() -> ml_collections.ConfigDict:
  """The full key set with paper-scale defaults."""
  c = ml_collections.ConfigDict()
  c.job = ""  # The job's name, shown in logs and exports.
  c.mode = "train"  # 'train' (resumes; evaluates at the end) or 'eval' (latest checkpoint).
  c.seed = 0  # Seeds initialisation, data order, crops and degradations.
  # What training optimises (sr_jax/objectives): 'pixel' (config.loss on one model's output),
  # 'gan' (config.gan: generator and discriminator), 'diffusion' (config.diffusion: SR3) or
  # 'resshift' (config.resshift: residual-shifting diffusion). Every job config sets it with
  # sr_jax.objectives.configure, which adds the objective's own section.
  c.objective = ""

  # The network (sr_jax/models/registry.py): an architecture, its preset and overrides.
  c.model = ml_collections.ConfigDict(dict(
      name="nafnet",  # Architecture (sr_jax/models/registry.py): nafnet, restormer, rrdbnet, ...
      preset="sidd_w32",  # A named layout of that architecture (docs/colora.md lists them).
      # Optional overrides of the preset's fields (0 / empty = keep the preset's value).
      width=0,  # NAFNet width or Restormer dim.
      # Compute dtype: 'float32' or 'bfloat16' (mixed precision: activations and matmuls in
      # bfloat16, parameters, gradients, losses and metrics in float32).
      dtype="float32",
      conv_impl="auto",  # 'auto' picks the fastest formulation per platform; 'xla' or 'shifted'.
      dropout=-1.0,  # Dropout rate of models that have one (SR3); -1 = the preset's.
  ))

  # The images (sr_jax/data): where they come from, the crops, and how inputs are degraded.
  c.data = ml_collections.ConfigDict(dict(
      # 'embedded' (scikit-image photos), 'folder' (clean images in train_dir / eval_dir,
      # degraded on the fly), 'paired' (degraded inputs in train_lq_dir / eval_lq_dir matched by
      # file name to targets in train_dir / eval_dir) or 'tfds' (a prepared TFDS dataset).
      source="embedded",
      embedded_set="photos",  # 'photos' or 'documents' (a second domain for transfer demos).
      train_dir="",  # Folder of clean training images (source 'folder' or 'paired').
      eval_dir="",  # Folder of clean held-out images.
      train_lq_dir="",  # Folder of degraded training inputs (source 'paired').
      eval_lq_dir="",  # Folder of degraded held-out inputs (source 'paired').
      tfds_name="",  # E.g. 'div2k/bicubic_x4', prepared with --file_format=array_record.
      tfds_data_dir="",  # TFDS data directory (empty = TFDS's default).
      tfds_train_split="train",  # TFDS split trained on.
      tfds_eval_split="validation",  # TFDS split evaluated on.
      tfds_hr_key="hr",  # Feature holding the clean (HR) image.
      tfds_lr_key="",  # E.g. 'lr' to train on the dataset's own LR images (else synthesised).
      crop_size=256,  # Side of the square training crops (the HR crop for SR).
      augment=True,  # Random flips and 90-degree rotations.
      # An image smaller than the crop: 'skip' (warn and drop it) or 'error'.
      small_images="skip",
      # A damaged training image (failing the integrity check run before the first step):
      # False = fail naming every one, True = skip each with a warning naming it.
      skip_bad_images=False,
      # Read images in sub-folders of the image folders too (False: only the folder itself;
      # sub-folders holding images are named in a warning).
      recursive=False,
      num_workers=0,  # grain worker processes; 0 = in the main process.
      # Use only the first N training images (in the source's order: file names sorted for
      # folders; after too-small images are dropped); 0 = all.
      num_train_images=0,
      eval_max_size=0,  # Centre-crop eval images to at most this many pixels per side (0 = full).
      # Crops of eval_max_size scored per held-out image (generated pairs, not stored ones):
      # 1 = the centre crop; k > 1 = k crops spread evenly over the image, so a few photos give
      # enough held-out samples for one run's number to mean something.
      eval_crops=1,
      # A validation split carved from the training images: the last N of them, which training
      # then never sees (0 = none). Hyper-parameters are chosen on it, never on the eval images.
      val_images=0,
      # What evaluation scores: 'eval' (the held-out images) or 'val' (the validation split).
      eval_split="eval",
      degradation=degradation_config(),
  ))

  # LoRA adapters on a frozen base (sr_jax/adapt/lora.py).
  c.lora = ml_collections.ConfigDict(dict(
      enabled=False,  # Train LoRA adapters on a frozen base instead of every parameter.
      rank=8,  # Rank of every adapter (see rank_overrides, plan_file).
      alpha=8.0,  # LoRA scale numerator: an adapter adds (alpha / rank) * A @ B.
      # 'standard' (alpha / rank) or 'rank_stabilized' (alpha / sqrt(rank): rsLoRA,
      # Kalajdzievski 2023; the update's size no longer falls as the rank grows).
      scaling="standard",
      targets=(r".*/kernel",),  # Regexes over 'module/sub/kernel' paths.
      # 'regex=rank' entries overriding the rank of matching kernels (0 freezes them).
      rank_overrides=(),
      extra_trainable=(),  # Regexes of base leaves trained fully (biases, norms, ...).
      # A JSON LoRA plan ({'ranks': {path: r}, 'alphas': {path: a}}), e.g. a CoLoRA allocation;
      # when set it replaces targets / rank / alpha / rank_overrides.
      plan_file="",
      # How training computes adapted layers (sr_jax/adapt/lora_branch.py): 'merged' (W +
      # scale * A @ B, differentiated whole: a weight gradient per step), 'unmerged' (the frozen
      # kernel a constant beside the low-rank branch), 'factored' (merged as a constant, the
      # factors' gradients from rank-r passes over the layer's input and output gradient), or
      # 'auto' (per layer, the layout lora.cost_model predicts fastest). Inference and exports
      # always merge.
      formulation="auto",
      # What 'auto' compares per layer (sr_jax/adapt/lora_layouts.py): 'roofline' (multiply-adds
      # and bytes moved at this machine's measured rates, sr_jax/adapt/roofline.py, cached per
      # device kind) or 'flops' (the former rule: merged or unmerged, fewer multiply-adds).
      cost_model="roofline",
      # The layouts 'auto' chooses from under the roofline: unmerged is left out by default,
      # as it keeps more memory than factored for a time the roofline rates within 1% of the
      # step (sr_jax/adapt/lora_layouts.py).
      auto_layouts=("merged", "factored"),
      # A LoRA run trains at optimizer.learning_rate x this: adapters start at zero and need a
      # higher rate than full fine-tuning. 3 is what the adaptation study (docs/colora.md)
      # chose on its validation split: LoRA arms' rates 1-3.3x full fine-tuning's.
      learning_rate_multiplier=3.0,
  ))

  # CoLoRA (sr_jax/adapt/colora.py, sr_jax/jobs/colora_job.py): base -> probe fine-tune -> FAIG ->
  # contribution-based ranks -> fine-tuning arms -> one results table.
  c.colora = ml_collections.ConfigDict(dict(
      enabled=False,  # Run the CoLoRA job (sr_jax/jobs/colora_job.py) instead of one training run.
      # Fine-tuning arms run at equal steps and data: 'colora', 'uniform' (uniform-rank LoRA at
      # the same budget), 'full' (every parameter). The base and the input are always evaluated.
      arms=("colora",),
      probe_checkpoint="",  # A fine-tuned params dir as FAIG's endpoint; empty = run a probe.
      probe_steps=200,  # Full fine-tuning steps of the probe.
      probe_learning_rate=2e-4,  # Learning rate of the probe fine-tune.
      faig_steps=100,  # M: interpolation steps of the integrated gradients.
      faig_images=16,  # Task crops FAIG is computed on (data.crop_size, from the train stream).
      faig_batch=0,  # Crops per FAIG forward/backward (0 = all at once); divides faig_images.
      score="mean",  # A layer's contribution: 'mean' FAIG per parameter, or 'total'.
      budget=0.07,  # Trainable share of the base's parameters (adapters + fully tuned leaves).
      alpha=1.0,  # How sharply rank follows contribution (0 = uniform).
      beta=0.0,  # Floor: a layer of zero contribution gets beta of the top layer's weight.
      max_rank=0,  # Cap on any layer's rank (0 = no cap beyond the kernel's own).
      depthwise="frozen",  # Depthwise convs: 'frozen' or 'full' (tuned fully, within budget).
      tune_extras=True,  # Tune biases, norms and NAFNet beta/gamma fully (within budget).
      lora_scale=1.0,  # Each layer's LoRA alpha is lora_scale * its rank.
  ))

  # The base a fine-tuning job starts from: a checkpoint, or pre-trained here first.
  c.base = ml_collections.ConfigDict(dict(
      checkpoint="",  # Directory holding a base checkpoint; empty = pre-train one in workdir/base.
      num_steps=0,  # Steps of base pre-training here (0 = none; ignored with checkpoint).
      learning_rate=1e-3,  # Learning rate of base pre-training.
      milestones=(),  # Replaces optimizer.milestones in pre-training (multistep schedules).
      embedded_set="",  # Pre-train on this data.embedded_set ('' = the task's own).
      train_dir="",  # Pre-train on this folder of clean images ('' = the task's data).
      ema_decay=-1.0,  # The pre-training stage's ema.decay; -1 = the job's.
      degradation=degradation_config(),
  ))

  # The adaptation study (sr_jax/study): per task and seed, every arm at its own learning rate
  # chosen on a validation split of the training images (python -m sr_jax.study).
  c.study = ml_collections.ConfigDict(dict(
      # Tasks the base never saw: 'haze', 'low_light', 'poisson_noise' (or any degradation op),
      # or 'domain': the config's own degradation on data.train_dir's images (a new domain).
      tasks=("haze", "low_light", "poisson_noise"),
      # 'full', 'uniform' (LoRA), 'colora'; 'range' (a diffusion chain's data end only).
      arms=("full", "uniform", "colora"),
      # Run every arm once per objective ('pixel', 'gan'); empty = config.objective only.
      objectives=(),
      # The 'range' arm of a diffusion objective trains timesteps 1..range_t_max only.
      range_t_max=5,
      budget=0.07,  # Trainable share of the LoRA arms in the main table.
      curve_budgets=(0.01, 0.03, 0.15),  # More budgets of the LoRA arms: the budget curve.
      curve_tasks=("haze",),  # Tasks the budget curve is measured on.
      # Choose each curve point's rate on the validation split too (False: reuse the rate the
      # same arm chose at study.budget, a third of the runs; the study.md says which).
      curve_select_rates=True,
      seeds=(0, 1, 2),  # The main table's seeds (mean +- std); curve points use the first.
      full_learning_rates=(3e-4, 1e-3, 3e-3),  # Candidates, chosen on the validation split.
      lora_learning_rates=(1e-3, 3e-3, 1e-2),  # Candidates of the LoRA arms.
      # A folder source's training folder is split once (fixed shuffle): base_images for the
      # base's pre-training, then train_images to fine-tune on, then val_images to choose
      # learning rates on; the evaluation folder (data.eval_dir) is the reported test set.
      base_images=0,  # Images for the base's pre-training (0 = none: base.checkpoint is given).
      train_images=16,  # Images the arms fine-tune on.
      val_images=8,  # Images the learning rates are chosen on.
      # Evaluation images reported (0 = all of data.eval_dir); with data.eval_dir empty, how
      # many test images to cut from data.train_dir after the other splits.
      test_images=0,
      # The first N images of eval.general_set (a folder) that score what a transfer forgets,
      # linked into the study's splits (0 = all of them).
      general_images=0,
  ))

  # The pixel loss (sr_jax/objectives/pixel.py; a GAN's pixel term).
  c.loss = ml_collections.ConfigDict(dict(
      kind="psnr",  # 'l1', 'charbonnier' or 'psnr' (NAFNet's -PSNR loss).
      charbonnier_eps=1e-3,  # Charbonnier loss: sqrt(d^2 + eps^2).
  ))

  c.optimizer = optimizer_config()
  c.eval = eval_config()
  # An exponential moving average of the trainable weights, kept in the train state (sharded
  # and checkpointed like them) and used for evaluation and export (sr_jax/objectives/step.py).
  c.ema = ml_collections.ConfigDict(dict(
      # ema <- decay * ema + (1 - decay) * weights after every step; about 1 / (1 - decay) steps
      # of memory; 0 = off. The GAN objective keeps its own (gan.ema_decay).
      decay=0.0,
  ))

  # The device mesh (sr_jax/util/sharding.py); the batch is split over all its devices.
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,  # Devices on the 'data' axis; -1 = all devices / fsdp.
      # Devices each parameter (and its optimizer moments) is split over (FSDP); 1 = replicated.
      # For models too large to replicate, e.g. SR3's paper preset: 4 or 8.
      fsdp=1,
      fsdp_min_size=2**14,  # Leaves with fewer elements stay replicated under FSDP.
  ))

  # Divergence guards (sr_jax/train/guards.py), checked on the updated state before every save: a
  # state with a non-finite leaf, a parameter above max_param_abs or a logged loss above
  # max_loss is never saved, and the run stops naming the last good checkpoint.
  c.guard = ml_collections.ConfigDict(dict(
      max_loss=float("inf"),  # Blow-up threshold on any '*loss' metric; inf = off.
      max_param_abs=1e6,  # Largest |parameter| a healthy image network reaches; inf = off.
  ))

  c.num_steps = 200_000  # Training steps of the run.
  c.batch_size = 32  # Global batch, split over the 'data' axis.
  c.log_every = 100  # Steps between console lines and TensorBoard training scalars.
  c.checkpoint_every = 1000  # Steps between checkpoints (the run resumes from the latest).
  c.keep_checkpoints = 3  # Checkpoints kept on disk (older ones are deleted).
  c.eval_every = 0  # Steps between evaluations on the held-out images; 0 = only at the end.
  c.eval_checkpoint_step = -1  # The checkpoint mode='eval' restores; -1 = the latest.
  c.num_image_summaries = 3  # Eval images shown in TensorBoard (input | output | target).
  return c


def apply_demo(c: ml_collections.ConfigDict) -> None:
  """Shrinks a job to the embedded photos on 2 CPU cores (minutes, not days)."""
  c.data.source = "embedded"
  c.data.crop_size = 64
  c.data.eval_max_size = 128
  c.batch_size = 8
  c.log_every = 25
  c.checkpoint_every = 100
