"""SR3 jobs end to end: configs/sr3_finetune.py shrunk to a micro UNet and a 20-step schedule.

One run does what the demo does at a tiny scale: pre-trains a base on the photos (W/base),
fine-tunes LoRA adapters on part of the chain on the documents, samples both domains, and
exports. The base must stay bit-identical, the adapters must move, the table must hold the
baseline, base, tuned and original-domain rows, and `sr_jax.infer` with the exported adapter
must reproduce the run's own evaluation (split sampling included).
"""

import os

import jax
import numpy as np

from configs import sr3, sr3_finetune
import pytest

from sr_jax import forgetting, infer
from sr_jax.adapt import adapters, lora
from sr_jax.data import pipeline
from sr_jax.jobs import base_stage, train
from sr_jax.quality import metrics
from sr_jax.tools import sr3_sampling
from sr_jax.train import run_setup
from sr_jax.util import exports, trees


def _micro(config):
  config.model.preset = "micro"
  config.model.conv_impl = "xla"
  config.data.crop_size = 16
  config.data.eval_max_size = 24
  config.batch_size = 8
  config.diffusion.num_timesteps = 20
  config.diffusion.beta_start, config.diffusion.beta_end = 1e-3, 0.2
  config.diffusion.sample_steps = 4
  config.eval.lpips = ()
  config.log_every = 2
  config.num_image_summaries = 1


def test_configs_load_with_their_variants():
  paper = sr3.get_config()
  assert (paper.model.preset, paper.data.degradation.scale, paper.data.crop_size) == (
      "sr3_16_128", 8, 128)
  assert paper.objective == "diffusion" and paper.diffusion.num_timesteps == 2000
  both = sr3_finetune.get_config("demo,lora,range")
  assert both.lora.enabled and (both.diffusion.t_min, both.diffusion.t_max) == (1, 500)
  assert both.base.num_steps > 0 and both.data.embedded_set == "documents"
  assert not sr3_finetune.get_config().lora.enabled


def test_lora_on_part_of_the_chain_end_to_end(tmp_path):
  config = sr3_finetune.get_config("demo,lora,range")
  _micro(config)
  config.base.num_steps = 4
  config.num_steps = 3
  config.diffusion.t_min, config.diffusion.t_max = 1, 10
  config.checkpoint_every = 100  # Only the last step of each stage saves (orbax is slow here).
  config.eval.consistency = True
  rows = train.train_and_evaluate(config, str(tmp_path))

  arm = "lora t in [1, 10] (base outside), DDIM 4 steps"
  assert list(rows) == ["bicubic", "base", arm, "base @ general set", f"{arm} @ general set"]
  for row in rows.values():
    assert np.isfinite(row["psnr"]) and row["consistency"] >= 0
  assert rows[arm]["trainable"] < 0.2 * lora.count(
      exports.load_params(str(tmp_path / "base" / "export" / "params"))[0])
  assert "change" in forgetting.change_table(rows)

  base_dir = str(tmp_path / "base" / "export" / "params")
  base, _ = exports.load_params(base_dir)
  adapter = adapters.load_adapter(str(tmp_path / "export" / "adapters"))
  assert adapter.meta["diffusion"]["t_max"] == 10 and adapter.meta["diffusion"]["scale"] == 4
  b_factors = [v for k, v in trees.flatten(adapter.lora).items() if k.endswith("/b")]
  assert any(np.abs(b).max() > 0 for b in b_factors)  # The adapters trained ...
  saved = exports.load_params(str(tmp_path / "export" / "params"))[0]
  changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved),
                                                      jax.tree.leaves(base))]
  assert any(changed)  # ... the merged export differs from the base ...
  run_base = base_stage.base_stage(config, str(tmp_path))  # ... which itself did not move.
  for a, b in zip(jax.tree.leaves(run_base), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)

  # sr_jax.infer with the base and the adapter reproduces the run's evaluation, image by image.
  restorer = infer.diffusion_restorer(base_dir, str(tmp_path / "export" / "adapters"),
                                      sampler="ddim", steps=4)
  assert restorer.sr3.split_sampling
  item = pipeline.make_eval_set(config.data, seed=config.seed)[0]
  out = restorer(item["lq"])
  psnr = float(metrics.psnr(out[None], item["gt"][None], crop_border=4)[0])
  assert abs(psnr - rows[arm]["per_image"][0]["psnr"]) < 1e-3
  assert os.path.exists(tmp_path / "results.md")

  # The sampler comparison: the run's own sampler reproduces its row; the full chain runs too.
  compared = sr3_sampling.compare(base_dir, str(tmp_path / "export" / "adapters"), config,
                                  sr3_sampling.parse_samplers("ddim:4,ddpm:0,dpmpp_2m:3"))
  assert [r["sampler"] for r in compared] == ["bicubic", "DDIM 4 steps", "DDPM 20 steps",
                                              "DPM-Solver++(2M) 3 steps"]
  assert [r["steps"] for r in compared] == [0, 4, 20, 3]
  assert compared[0]["psnr"] == pytest.approx(rows["bicubic"]["psnr"], abs=1e-6)
  assert compared[1]["psnr"] == pytest.approx(rows[arm]["psnr"], abs=1e-3)
  assert "| SR3 | DDPM 20 steps | 20 |" in sr3_sampling.table(compared, 1)


def test_sampler_list_errors_name_the_flag():
  assert sr3_sampling.parse_samplers("ddim:50, ddpm:0,dpmpp_2m:20:uniform") == [
      ("ddim", 50, "auto"), ("ddpm", 0, "auto"), ("dpmpp_2m", 20, "uniform")]
  for bad in ("ddim", "euler:10", "ddpm:-1", "", "dpmpp_2m:20:karras"):
    with pytest.raises(ValueError, match="--samplers"):
      sr3_sampling.parse_samplers(bad)


def test_sr3_without_the_diffusion_objective_is_an_error_naming_the_key(tmp_path):
  config = sr3.get_config("demo")
  config.objective = "pixel"
  with pytest.raises(ValueError, match="config.objective"):
    run_setup.build_run(config, str(tmp_path), None)
