"""The GAN super-resolution tables: the three demos, ESRGAN-LoRA transfer, forward runtime."""

from __future__ import annotations

import os

from sr_jax.reproduce import render
from sr_jax.reproduce.table import Region, Step, Table, main_job

GAN_MODELS = ("srgan", "esrgan", "mesrgan")
_QUALITY = ("psnr", "ssim", "lpips_alex", "rmse", "trainable", "step_ms", "step_memory_mb")


def _stage_rows(workdir: str) -> list[tuple[str, dict]]:
  """bicubic once, then each model's L1 stage (the run's base) and GAN stage."""
  rows = []
  for model in GAN_MODELS:
    found = render.results(os.path.join(workdir, model))
    arms = [a for a in found if a not in ("bicubic", "base")]
    if not rows and "bicubic" in found:
      rows.append(("bicubic", found["bicubic"]))
    rows.append((f"{model}: L1 stage", found["base"]))
    rows += [(f"{model}: GAN stage ({a})", found[a]) for a in arms]
  return rows


def _gan_demos(workdir: str) -> str:
  return ("PSNR/SSIM on the Y channel with crop 4 (BasicSR), LPIPS-alex, over the held-out "
          "photos; 'trainable params' counts the generator; ms/step is the GAN stage's.\n\n" +
          render.rows_table(_stage_rows(workdir), _QUALITY, first_header="model: stage"))


GAN_DEMOS = Table(
    name="gan_demos",
    what="docs/gan.md: SRGAN, ESRGAN and MESRGAN demos (L1 stage, then GAN stage).",
    steps=tuple(main_job(f"configs/{m}.py:demo", f"{{workdir}}/{m}") for m in GAN_MODELS),
    regions=(Region("docs/gan.md", _gan_demos),),
    wall_time=("not measured alone yet "
               "(estimate: about 28 minutes (5m23 + 7m15 + 15m35, measured beside other jobs))"),
)

_L1_ONLY = ("gan.gan_weight=0", "gan.perceptual_weight=0", "gan.pixel_weight=1")


def _esrgan_lora(workdir: str) -> str:
  gan, l1 = (render.results(os.path.join(workdir, d)) for d in ("gan", "l1"))
  rows = [(a if a in render.SHARED_ROWS else f"{a} (GAN objective)", r) for a, r in gan.items()]
  rows += [(f"{a} (L1 objective)", r) for a, r in l1.items() if a not in render.SHARED_ROWS]
  return ("Text (scikit-image's 'text') is the new domain; '@ general set' rows are the "
          "held-out photos (what the transfer forgets). PSNR/SSIM on Y, crop 4.\n\n" +
          render.rows_table(rows, ("psnr", "ssim", "lpips_alex", "trainable", "trainable_pct",
                                   "export_mb", "step_ms")))


ESRGAN_LORA = Table(
    name="esrgan_lora_demo",
    what="docs/gan.md: LoRA transfer of a small RRDBNet to scanned text, GAN and L1 objectives.",
    steps=(main_job("configs/esrgan_lora.py:demo", "{workdir}/gan"),
           main_job("configs/esrgan_lora.py:demo", "{workdir}/l1",
                    "base.checkpoint={workdir}/gan/base/export/params", *_L1_ONLY)),
    regions=(Region("docs/gan.md", _esrgan_lora),),
    wall_time="4m06s (measured 2026-12-07 alone)",
)

GAN_RUNTIME = Table(
    name="gan_runtime",
    what="docs/gan.md: forward time of SRGAN, ESRGAN and MESRGAN under XLA (x4, 32 -> 128).",
    steps=(Step("sr_jax.tools.gan_compare", ("--skip_breakdown", "--output",
                                             "{workdir}/gan_compare.md")),),
    regions=(Region("docs/gan.md", render.tool_report("gan_compare.md", "Forward runtime",
                                                      "MESRGAN / ESRGAN")),),
    needs="nothing (random inputs)",
    wall_time="not yet measured alone",
)

def _transfer(workdir: str) -> str:
  """The study's report (its tables, settings and splits) and the photo base's own table."""
  names = {"base": "L1 stage", "GAN": "GAN stage: the study's base"}
  base = render.rows_table([(names.get(k, k), r) for k, r in
                            render.results(os.path.join(workdir, "base")).items()],
                           ("psnr", "ssim", "lpips_alex", "step_ms"), first_header="photo base")
  return ("The base on the CBSD68 photographs (its own held-out set, 384-pixel centre crops):"
          "\n\n" + base + "\n\n" + render.study_report(os.path.join(workdir, "study")))


GAN_TRANSFER = Table(
    name="gan_transfer",
    what="docs/gan.md: LoRA and full fine-tuning of a photo-trained RRDBNet on manga, L1 and "
         "GAN objectives, rates chosen on validation, 2 seeds, forgetting on photographs.",
    steps=(main_job("configs/esrgan.py:photo_base", "{workdir}/base",
                    "data.train_dir={datasets}/CSun_Hays80", "data.eval_dir={datasets}/CBSD68"),
           Step("sr_jax.study", (
               "--config", "configs/esrgan_lora.py:transfer", "--workdir", "{workdir}/study",
               "--config.base.checkpoint={workdir}/base/export/params",
               "--config.data.train_dir={datasets}/CManga109_60",
               "--config.eval.general_set={datasets}/CBSD68"))),
    regions=(Region("docs/gan.md", _transfer),),
    needs="Sun-Hays 80 (the base), Manga109 colour pages (the new domain) and CBSD68 (the "
          "photographs the forgetting is scored on)",
    datasets=("CSun_Hays80", "CManga109_60", "CBSD68"),
    wall_time=("52m32s (measured 2026-12-07: the base 14 minutes, the study 38; about 5 minutes "
               "of tests ran beside the base's L1 stage)"),
    figures=(("study/study.png", "docs/gan_transfer.png"),),
)

TABLES = (GAN_DEMOS, ESRGAN_LORA, GAN_RUNTIME, GAN_TRANSFER)
