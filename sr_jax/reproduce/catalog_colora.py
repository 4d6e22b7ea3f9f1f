"""The CoLoRA tables: the README demo (three seeds), the demo's arms, Restormer, the study."""

from __future__ import annotations

import glob
import os

from sr_jax.reproduce import render
from sr_jax.reproduce.table import Region, Step, Table, main_job
from sr_jax.util import jsonfile

DEMO_SEEDS = (0, 1, 2)
DEMO_IMAGES = "12 held-out 128x128 crops of 3 photos"  # data.eval_crops=4 of the demos.

_SEED_COLUMNS = (
    ("psnr", "PSNR (dB)", lambda v: render.spread(v, 2)),
    ("ssim", "SSIM", lambda v: render.spread(v, 3)),
    ("trainable", "trainable params", render.first("{:,.0f}")),
    ("trainable_pct", "% of base", render.first("{:.2f}")),
    ("export_mb", "export MiB", render.first("{:.2f}")),
    ("step_ms", "ms/step", render.mean("{:.0f}")),
    ("step_memory_mb", "step memory MiB", render.first("{:.0f}")),
)


def seeds_note(seeds: tuple[int, ...], images: str) -> str:
  return (f"PSNR/SSIM on RGB over {images}; mean +- std over seeds {', '.join(map(str, seeds))} "
          "(`--config.seed`) with the range in brackets; ms/step is the mean over seeds.")


def _seed_runs(workdir: str, seeds: tuple[int, ...]) -> list[render.Rows]:
  return [render.results(os.path.join(workdir, f"seed{s}")) for s in seeds]


def _seed_table(seeds: tuple[int, ...], images: str):
  def draw(workdir: str) -> str:
    table = render.seed_table(_seed_runs(workdir, seeds), _SEED_COLUMNS)
    return f"{seeds_note(seeds, images)}\n\n{table}"
  return draw


def _seed_steps(config: str, seeds: tuple[int, ...]):
  return tuple(main_job(config, f"{{workdir}}/seed{s}", f"seed={s}") for s in seeds)


DEMO = Table(
    name="demo",
    what="The README's demo: PROD base + CoLoRA on haze, tiny NAFNet, three seeds.",
    steps=_seed_steps("configs/colora_nafnet.py:demo", DEMO_SEEDS),
    regions=(Region("README.md", _seed_table(DEMO_SEEDS, DEMO_IMAGES)),),
    wall_time="10m36s (measured 2026-12-08 alone; 3 runs of 3.5 minutes)",
)

COLORA_ABLATION = Table(
    name="colora_demo_ablation",
    what="docs/colora.md: the demo's three arms (full, uniform LoRA, CoLoRA), three seeds.",
    steps=_seed_steps("configs/colora_nafnet.py:demo_ablation", DEMO_SEEDS),
    regions=(Region("docs/colora.md", _seed_table(DEMO_SEEDS, DEMO_IMAGES)),),
    wall_time="14m22s (measured 2026-12-08 alone; 3 runs of under 5 minutes)",
)

COLORA_RESTORMER = Table(
    name="colora_restormer_demo",
    what="docs/colora.md: CoLoRA's arms on a micro Restormer (haze), one seed.",
    steps=(main_job("configs/colora_restormer.py:demo_ablation", "{workdir}/seed0", "seed=0"),),
    regions=(Region("docs/colora.md", _seed_table((0,), DEMO_IMAGES)),),
    wall_time="8m24s (measured 2026-12-08 alone)",
)


def _study_summary(workdir: str) -> str:
  """The main budget's rows of study.md, one line per task (arms side by side)."""
  rows = render.table_rows(render.tables_in(render.study_report(workdir))[0])
  tasks = list(dict.fromkeys(r["task"] for r in rows))
  by = {(r["task"], r["arm"]): r for r in rows}
  arms = [a for a in ("full", "uniform@7%", "colora@7%") if any((t, a) in by for t in tasks)]
  lines = ["| task | " + " | ".join(f"{a} test PSNR (dB)" for a in arms) +
           " | rates chosen on validation |", "|---|" + "---|" * (len(arms) + 1)]
  for t in tasks:
    cells = [by[(t, a)]["test PSNR (dB)"] if (t, a) in by else "-" for a in arms]
    rates = " / ".join(by[(t, a)]["learning rate (chosen on validation)"] if (t, a) in by
                       else "-" for a in arms)
    lines.append(f"| {t} | " + " | ".join(cells) + f" | {rates} |")
  return "\n".join(lines)


_STUDY_DATA = ("--config.data.source=folder", "--config.data.train_dir={datasets}/CSun_Hays80",
               "--config.data.eval_dir={datasets}/CBSD68")

STUDY = Table(
    name="study",
    what="docs/study.md and docs/colora.md: full vs uniform LoRA vs CoLoRA, 3 tasks x 3 seeds.",
    steps=(Step("sr_jax.study", ("--config", "configs/colora_nafnet.py:study", "--workdir",
                                 "{workdir}") + _STUDY_DATA +
                ("--config.study.curve_select_rates=False",)),),
    regions=(Region("docs/study.md", render.study_report),
             Region("docs/colora.md", _study_summary, key="summary")),
    needs="Sun-Hays 80 (base, fine-tuning, validation) and CBSD68 (test) photographs",
    datasets=("CSun_Hays80", "CBSD68"),
    wall_time=("not measured alone yet "
               "(estimate: about 150 minutes, measured beside other jobs)"),
    figures=(("study.png", "docs/study.png"),),
)

TLC = Table(
    name="tlc_large_photo",
    what="docs/colora.md: TLC on a 4096x3200 photograph, whole against tiles, on and off.",
    steps=(main_job("configs/colora_nafnet.py:demo", "{workdir}/demo"),
           Step("sr_jax.tools.tlc_report", (
               "--photo", "{datasets}/CSun_Hays80/abbey_sun_asztnlqhlrvirneh.jpg", "--run",
               "{workdir}/demo", "--workdir", "{workdir}/tlc", "--output", "{workdir}/tlc.md"))),
    regions=(Region("docs/colora.md", render.tool_report("tlc.md")),),
    needs="one Sun-Hays 80 photograph (abbey_sun_asztnlqhlrvirneh.jpg)",
    datasets=("CSun_Hays80",),
    wall_time="6m42s (measured 2026-12-07, over 2 sittings)",
)

BANK_TASKS = ("haze", "low_light", "poisson_noise", "rain")
_BANK_BASE = "{workdir}/haze/base/export/params"

BANK = Table(
    name="adapter_bank",
    what="docs/deploy.md: a mixed batch through an adapter bank against one merged adapter.",
    steps=(main_job("configs/colora_nafnet.py:demo", "{workdir}/haze"),) + tuple(
        main_job("configs/colora_nafnet.py:demo", f"{{workdir}}/{task}",
                 f"base.checkpoint={_BANK_BASE}", f"data.degradation.ops={task}")
        for task in BANK_TASKS[1:]) + (
        Step("sr_jax.tools.bank_benchmark", ("--checkpoint", _BANK_BASE) + tuple(
            a for task in BANK_TASKS
            for a in ("--adapter", f"{task}={{workdir}}/{task}/colora/export/adapters")) +
            ("--output", "{workdir}/bank.md")),),
    regions=(Region("docs/deploy.md", render.tool_report("bank.md")),),
    wall_time="9m03s (measured 2026-12-07: the demo, three adapters, the timings)",
)

WIDE_FULL_RATES, WIDE_LORA_RATES = "3e-4,1e-3,3e-3,1e-2", "1e-3,3e-3,1e-2,3e-2"
_RULE_SCALINGS = (("standard", "alpha / r"), ("rslora", "alpha / sqrt(r), rsLoRA"))
_RULE_STUDY = ("--config", "configs/colora_nafnet.py:study") + _STUDY_DATA + (
    "--config.study.tasks=haze", "--config.study.curve_tasks=", "--config.study.seeds=0,1",
    f"--config.study.full_learning_rates={WIDE_FULL_RATES}",
    f"--config.study.lora_learning_rates={WIDE_LORA_RATES}")


def _rule_table(workdir: str) -> str:
  """Per scaling and arm: validation PSNR of every candidate rate, the choice, and the test
  PSNR (mean +- std over the seeds) at it."""
  lines = ["| LoRA scaling | arm | validation PSNR (dB) per candidate rate | chosen | "
           "at the list's top? | test PSNR (dB) |", "|---|---|---|---|---|---|"]
  for folder, scaling in _RULE_SCALINGS:
    report = render.table_rows(
        render.tables_in(render.study_report(os.path.join(workdir, folder)))[0])
    tests = {r["arm"]: r["test PSNR (dB)"] for r in report}
    for path in sorted(glob.glob(os.path.join(workdir, folder, "haze", "*", "selection.json"))):
      arm = os.path.basename(os.path.dirname(path)).replace("pct", "%")
      found = jsonfile.read(path)
      scores = found["validation_psnr"]
      top = list(scores)[-1] == f"{found['chosen']:g}"
      cells = ", ".join(f"{lr}: {v:.2f}" for lr, v in scores.items())
      lines.append(f"| {scaling if arm != 'full' else '-'} | {arm} | {cells} | "
                   f"{found['chosen']:g} | {'yes' if top else 'no'} | {tests.get(arm, '-')} |")
  return ("The adaptation study on its haze task with the candidate lists widened upward (full "
          f"fine-tuning {WIDE_FULL_RATES}, LoRA arms {WIDE_LORA_RATES}), seeds 0 and 1; the "
          "rsLoRA rows rerun the LoRA arms from the same base. Validation on 8 Sun-Hays photos, "
          "test on CBSD68.\n\n" + "\n".join(lines))


LR_RULE = Table(
    name="lr_rule",
    what="docs/study.md: the study's rate lists widened upward, and rsLoRA's scaling (haze).",
    steps=(Step("sr_jax.study", _RULE_STUDY + ("--workdir", "{workdir}/standard")),
           Step("sr_jax.study", _RULE_STUDY + (
               "--workdir", "{workdir}/rslora", "--config.study.arms=uniform,colora",
               "--config.base.checkpoint={workdir}/standard/base/export/params",
               "--config.lora.scaling=rank_stabilized"))),
    regions=(Region("docs/study.md", _rule_table),),
    needs="Sun-Hays 80 (base, fine-tuning, validation) and CBSD68 (test) photographs",
    datasets=("CSun_Hays80", "CBSD68"),
    wall_time="26m51s (measured 2026-12-07, each study alone: 15.5 and 11.4 minutes)",
)



def _lora_rate(name: str, config: str, multipliers: str, wall_time: str) -> Table:
  """A pinned job's LoRA multiplier chosen on 2 held-out training photos (tools/lora_rate)."""
  return Table(
      name=name,
      what=f"docs/study.md: {config}'s LoRA rate multiplier, chosen on a validation split.",
      steps=(Step("sr_jax.tools.lora_rate", ("--config", config, "--workdir", "{workdir}",
                                             "--multipliers", multipliers, "--val_images",
                                             "2")),),
      regions=(Region("docs/study.md", render.tool_report("choice.md")),),
      wall_time=wall_time,
  )


# The first lists (1, 3, 10) chose an end in both jobs (10 for NAFNet, 1 for Restormer): each
# is widened past that end, appended so the first run's base serves the new candidates too
# (Restormer chose 0.3, then 0.1, the end each time, so 0.03 follows).
LORA_RATE_NAFNET = _lora_rate("lora_rate_nafnet", "configs/lora_nafnet.py:demo", "1,3,10,30",
                              "3m17s (measured 2026-12-07 alone, over 2 sittings: 1, 3 and 10 "
                              "in 2m27s, 30 in 50 s)")
LORA_RATE_RESTORMER = _lora_rate("lora_rate_restormer", "configs/colora_restormer.py:demo",
                                 "1,3,10,0.3,0.1,0.03", "22m27s (measured 2026-12-07 alone, over 4 "
                                 "sittings: 1, 3 and 10 in 10m54s, then about 3m50s per "
                                 "candidate)")

TABLES = (DEMO, COLORA_ABLATION, COLORA_RESTORMER, STUDY, TLC, BANK, LR_RULE, LORA_RATE_NAFNET,
          LORA_RATE_RESTORMER)
