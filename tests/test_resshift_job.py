"""ResShift jobs end to end: configs/resshift_finetune.py shrunk to a micro UNet and a 4-step chain.

One run does what the fine-tuning demo does at a tiny scale: pre-trains a base on the photos
(W/base), fine-tunes LoRA adapters on part of the chain on the documents, samples both
domains, and exports. The base must stay bit-identical, the adapters must move, the table must
hold the bicubic, base, tuned and original-domain rows, `sr_jax.infer` with the exported
adapter must reproduce the run's own evaluation (split sampling included), and the sampler
table must hold the bicubic and ResShift rows.
"""

import jax
import numpy as np
import pytest

from configs import resshift, resshift_finetune
from sr_jax import forgetting, infer
from sr_jax.adapt import adapters, lora
from sr_jax.data import pipeline
from sr_jax.jobs import base_stage, train
from sr_jax.quality import metrics
from sr_jax.tools import sr3_sampling
from sr_jax.util import exports, trees


def _micro(config):
  config.model.preset = "micro"
  config.model.conv_impl = "xla"
  config.data.crop_size = 16
  config.data.eval_max_size = 24
  config.batch_size = 8
  config.resshift.num_steps = 4
  config.eval.lpips = ()
  config.log_every = 2
  config.num_image_summaries = 1
  config.checkpoint_every = 100  # Only the last step of each stage saves (orbax is slow here).


def test_configs_load_with_their_variants():
  paper = resshift.get_config()
  assert (paper.objective, paper.model.name, paper.data.degradation.scale) == (
      "resshift", "sr3", 4)
  assert paper.eval.y_channel and paper.eval.crop_border == -1 and "alex" in paper.eval.lpips
  demo = resshift.get_config("demo")
  assert demo.model.preset == "tiny" and demo.data.crop_size == 64
  both = resshift_finetune.get_config("demo,lora,range")
  assert both.lora.enabled and (both.resshift.t_min, both.resshift.t_max) == (1, 5)
  assert both.base.num_steps > 0 and both.data.embedded_set == "documents"
  assert not resshift_finetune.get_config().lora.enabled


def test_lora_on_part_of_the_chain_end_to_end(tmp_path):
  config = resshift_finetune.get_config("demo,lora,range")
  _micro(config)
  config.base.num_steps = 4
  config.num_steps = 3
  config.resshift.t_min, config.resshift.t_max = 1, 2
  config.eval.consistency = True
  rows = train.train_and_evaluate(config, str(tmp_path))

  arm = "lora t in [1, 2] (base outside), ResShift 4 steps"
  assert list(rows) == ["bicubic", "base", arm, "base @ general set", f"{arm} @ general set"]
  for row in rows.values():
    assert np.isfinite(row["psnr"]) and row["consistency"] >= 0
  base_dir = str(tmp_path / "base" / "export" / "params")
  base, base_meta = exports.load_params(base_dir)
  assert base_meta["resshift"]["num_steps"] == 4 and base_meta["resshift"]["t_max"] == 0
  assert rows[arm]["trainable"] < 0.2 * lora.count(base)
  assert "change" in forgetting.change_table(rows)

  adapter = adapters.load_adapter(str(tmp_path / "export" / "adapters"))
  assert adapter.meta["resshift"]["t_max"] == 2 and adapter.meta["resshift"]["scale"] == 4
  b_factors = [v for k, v in trees.flatten(adapter.lora).items() if k.endswith("/b")]
  assert any(np.abs(b).max() > 0 for b in b_factors)  # The adapters trained ...
  run_base = base_stage.base_stage(config, str(tmp_path))  # ... and the base did not move.
  for a, b in zip(jax.tree.leaves(run_base), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)

  # sr_jax.infer with the base and the adapter reproduces the run's evaluation, image by image.
  restorer = infer.diffusion_restorer(base_dir, str(tmp_path / "export" / "adapters"), seed=0)
  assert isinstance(restorer, infer.ResShiftRestorer) and restorer.sr.split_sampling
  item = pipeline.make_eval_set(config.data, seed=config.seed)[0]
  out = restorer(item["lq"])
  psnr = float(metrics.psnr(out[None], item["gt"][None], crop_border=4, y_channel=True)[0])
  assert abs(psnr - rows[arm]["per_image"][0]["psnr"]) < 1e-3

  # The sampler table: bicubic, then the tuned ResShift, which reproduces the run's row.
  compared = sr3_sampling.compare(base_dir, str(tmp_path / "export" / "adapters"), config,
                                  sr3_sampling.parse_samplers("ddim:4"))
  assert [(r["model"], r["sampler"]) for r in compared] == [
      ("-", "bicubic"), ("ResShift", "ResShift 4 steps")]
  assert compared[0]["psnr"] == pytest.approx(rows["bicubic"]["psnr"], abs=1e-6)
  assert compared[1]["psnr"] == pytest.approx(rows[arm]["psnr"], abs=1e-3)
  assert "| ResShift | ResShift 4 steps | 4 |" in sr3_sampling.table(compared, 1)
