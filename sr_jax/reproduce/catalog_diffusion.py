"""The diffusion tables: SR3 fine-tuning arms on a new domain, and SR3's samplers."""

from __future__ import annotations

import os

from sr_jax.reproduce import render
from sr_jax.reproduce.table import Region, Step, Table, main_job

_BASE = "{workdir}/sr3/export/params"  # The SR3 demo, shared with sr3_samplers.
_ARMS = (("full", "demo"), ("lora", "demo,lora"), ("range", "demo,range"))
_KEYS = ("psnr", "ssim", "lpips_alex", "consistency", "trainable_pct", "export_mb", "step_ms")


def _finetune(workdir: str) -> str:
  rows = []
  for i, (arm, _) in enumerate(_ARMS):
    found = render.results(os.path.join(workdir, arm))
    for label, row in found.items():
      shared = label in render.SHARED_ROWS
      if shared and i:
        continue  # bicubic and the base are the same in every arm's table.
      rows.append((label if shared else f"{arm}: {label}", row))
  return ("The new domain is scanned text (scikit-image's 'text'); '@ general set' rows are "
          "the photos (forgetting). PSNR/SSIM on RGB with crop 4, LPIPS-alex, consistency; "
          "samples drawn with the config's sampler.\n\n" + render.rows_table(rows, _KEYS))


SR3_FINETUNE = Table(
    name="sr3_finetune_demo",
    what="docs/diffusion.md: a tiny SR3 fine-tuned to text: full, LoRA, part of the chain.",
    steps=(main_job("configs/sr3.py:demo", "{workdir}/sr3"),
           *(main_job(f"configs/sr3_finetune.py:{variant}", f"{{workdir}}/{arm}",
                      f"base.checkpoint={_BASE}") for arm, variant in _ARMS)),
    regions=(Region("docs/diffusion.md", _finetune),),
    wall_time=("24m11s (measured 2026-12-07 alone: the SR3 demo 14 minutes, which it shares "
               "with sr3_samplers (reproduce both in one workdir), the three arms 9)"),
)

SR3_SAMPLERS = Table(
    name="sr3_samplers",
    what="docs/diffusion.md: DPM-Solver++(2M) and DDIM against DDPM's 2,000 steps (SR3 demo).",
    steps=(main_job("configs/sr3.py:demo", "{workdir}/sr3"),
           Step("sr_jax.tools.sr3_sampling", (
               "--checkpoint", "{workdir}/sr3/export/params", "--config", "configs/sr3.py:demo",
               "--config.data.eval_max_size=64", "--config.eval.lpips=alex",
               "--samplers", "ddpm:0,ddim:50,dpmpp_2m:5,dpmpp_2m:10,dpmpp_2m:20,dpmpp_2m:50,"
               "dpmpp_2m:100,dpmpp_2m:200", "--output", "{workdir}/sampling.md"))),
    regions=(Region("docs/diffusion.md", render.tool_report("sampling.md")),),
    wall_time="17m48s (measured 2026-12-07 alone: the base 14 minutes, DDPM 34 s per image)",
)


def _resshift(workdir: str) -> str:
  found = render.results(os.path.join(workdir, "run"))
  return ("The held-out photos (12 crops of 128x128, x4 MATLAB-bicubic LR): PSNR/SSIM on the Y "
          "channel with crop 4, LPIPS-alex, consistency; the model's rows sample the 15-step "
          "chain from the EMA of weights; s/image is the median time of one image's whole "
          "chain (the input's row: no model).\n\n" +
          render.rows_table(list(found.items()), ("psnr", "ssim", "lpips_alex", "consistency",
                                                  "seconds_per_image", "step_ms")))


RESSHIFT_DEMO = Table(
    name="resshift_demo",
    what="docs/diffusion.md: the ResShift demo (x4, 15 steps) against bicubic.",
    steps=(main_job("configs/resshift.py:demo", "{workdir}/run"),
           Step("sr_jax.tools.resshift_curves", (
               "--config", "configs/resshift.py:demo", "--samples", "0", "--checkpoint",
               "{workdir}/run/export/params", "--picture", "{workdir}/resshift.png",
               "--output", "{workdir}/curves.md"))),
    regions=(Region("docs/diffusion.md", _resshift),),
    figures=(("resshift.png", "docs/resshift.png"),),
    wall_time="35m (measured 2026-12-07: 33m02s the run, about 2 minutes its picture)",
)

# (label, folder, overrides): the demo's photos and model for 1,500 steps, one schedule change
# each, everything else equal.
RESSHIFT_RUNS = tuple((f"kappa {k:g}" + (" (the paper's)" if k == 2 else ""), f"kappa{k:g}",
                       ("num_steps=1500", f"resshift.kappa={k}"))
                      for k in (0.5, 2.0, 4.0, 8.0, 16.0)) + (
    ("kappa 64, eta_1 = 2.44e-8 (noise std 0.01 at t = 1)", "kappa64_quiet",
     ("num_steps=1500", "resshift.kappa=64.0", "resshift.eta_1=2.44140625e-08")),)
RESSHIFT_CURVES = ("kappa2", "kappa16", "kappa64_quiet")


def _kappa_table(workdir: str) -> str:
  rows = []
  for i, (label, folder, _) in enumerate(RESSHIFT_RUNS):
    found = render.results(os.path.join(workdir, folder))
    if not i:
      rows.append(("bicubic", found["bicubic"]))
    rows += [(label, row) for name, row in found.items() if name != "bicubic"]
  return ("The ResShift demo (configs/resshift.py:demo) at 1,500 steps, trained once per "
          "schedule, everything else equal; the held-out photos as in the demo's table (Y "
          "channel, crop 4; 15 sampling steps from the EMA of weights).\n\n" +
          render.rows_table(rows, ("psnr", "ssim", "lpips_alex", "consistency",
                                   "seconds_per_image"), first_header="run"))


RESSHIFT_KAPPA = Table(
    name="resshift_kappa",
    what="docs/diffusion.md: the ResShift demo's noise scale kappa, and where its chain drifts.",
    steps=tuple(main_job("configs/resshift.py:demo", f"{{workdir}}/{folder}", *overrides)
                for _, folder, overrides in RESSHIFT_RUNS) + (
        Step("sr_jax.tools.resshift_curves", (
            "--config", "configs/resshift.py:demo", "--samples", "0", "--checkpoint",
            ",".join(f"{{workdir}}/{folder}/export/params" for folder in RESSHIFT_CURVES),
            "--output", "{workdir}/curves.md")),),
    regions=(Region("docs/diffusion.md", _kappa_table),
             Region("docs/diffusion.md", render.tool_report("curves.md"), key="curves")),
    wall_time=("about 80 minutes (measured 2026-12-07 run by run, alone: 12 minutes per run, "
               "6 for the curves)"),
)


RESSHIFT_ADAPT = Table(
    name="resshift_adapt",
    what="docs/diffusion.md: the ResShift demo adapted from photographs to manga: full, LoRA, "
         "the chain's data end; rates chosen on validation, 2 seeds, forgetting on photos.",
    steps=(RESSHIFT_DEMO.steps[0],
           Step("sr_jax.study", (
               "--config", "configs/resshift_finetune.py:study", "--workdir", "{workdir}/study",
               "--config.base.checkpoint={workdir}/run/export/params",
               "--config.data.train_dir={datasets}/CManga109_60",
               "--config.eval.general_set={datasets}/CBSD68"))),
    regions=(Region("docs/diffusion.md",
                    lambda workdir: render.study_report(os.path.join(workdir, "study"))),),
    needs="Manga109 colour pages (the new domain) and CBSD68 (the photographs the forgetting "
          "is scored on); the base trains on the embedded photos",
    datasets=("CManga109_60", "CBSD68"),
    wall_time=("1h23m (measured 2026-12-07 alone: the ResShift demo 33 minutes, which it shares "
               "with resshift_demo (reproduce both in one workdir), and the study 50)"),
)

TABLES = (SR3_FINETUNE, SR3_SAMPLERS, RESSHIFT_DEMO, RESSHIFT_ADAPT, RESSHIFT_KAPPA)
