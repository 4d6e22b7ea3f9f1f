"""The real training loop on a micro NAFNet: end to end, resume, devices, NaN and mismatch errors."""

import glob
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import lora_nafnet
from sr_jax.adapt import lora
from sr_jax.data import pipeline
from sr_jax.jobs import train
from sr_jax.train import checkpoint, resume, run_setup
from sr_jax.util import exports, sharding, trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def micro_config(**overrides):
  c = lora_nafnet.get_config("demo")
  c.model.preset = "micro"
  c.data.crop_size, c.data.eval_max_size, c.batch_size = 32, 48, 8
  c.base.num_steps, c.num_steps = 0, 4
  c.log_every, c.checkpoint_every, c.num_image_summaries = 2, 2, 1
  c.lora.enabled = False
  # The rate these tests' tolerances were set at. At the demo's own 10x (1e-2), Adam's first
  # steps from B = 0 are about +-lr wherever a gradient is nearly zero, so the summation order
  # of 1 against 8 devices moves one of 64 entries by 0.6% after 3 steps.
  c.lora.learning_rate_multiplier = 1.0
  c.update_from_flattened_dict(overrides)
  return c


def _flat_export(workdir):
  return trees.flatten(exports.load_params(os.path.join(workdir, "export", "params"))[0])


def test_lora_job_end_to_end(tmp_path):
  """Base pre-training, LoRA fine-tuning, exports, table, TensorBoard; the base stays intact."""
  c = micro_config(**{"lora.enabled": True, "base.num_steps": 2, "num_steps": 2})
  rows = train.train_and_evaluate(c, str(tmp_path))
  assert set(rows) == {"degraded input", "base", "lora"}
  assert 0 < rows["lora"]["trainable_pct"] < 100
  assert np.isfinite(rows["lora"]["psnr"]) and 0 < rows["lora"]["ssim"] <= 1
  assert "| lora |" in (tmp_path / "results.md").read_text()
  assert glob.glob(str(tmp_path / "**" / "events.out.tfevents*"), recursive=True)
  meta = json.loads((tmp_path / "export" / "adapters" / "meta.json").read_text())
  assert "encoders_0_0/conv1/kernel" in meta["lora_plan"]["ranks"]
  assert not any("conv2" in p for p in meta["lora_plan"]["ranks"])  # Depthwise: no adapter.
  # Frozen base kernels in the fine-tuned run are bit-identical to the pre-trained base.
  base = _flat_export(tmp_path / "base")
  adapters, tuned_base, _ = exports.load_adapters(str(tmp_path / "export" / "adapters"))
  base_tree = exports.load_params(str(tmp_path / "base" / "export" / "params"))[0]
  plan = lora.LoraPlan.from_json(meta["lora_plan"])
  merged = lora.merge(base_tree, adapters, plan)
  flat_tuned = trees.flatten(tuned_base)
  exported = _flat_export(tmp_path)
  for path, value in trees.flatten(merged).items():
    expected = flat_tuned.get(path, value)  # Tuned leaves replace the base's.
    np.testing.assert_allclose(exported[path], expected, atol=1e-6, err_msg=path)
  assert "intro/kernel" not in flat_tuned
  np.testing.assert_array_equal(base["encoders_0_0/conv2/kernel"],
                                exported["encoders_0_0/conv2/kernel"])


def test_resume_equals_uninterrupted_and_eval_mode(tmp_path):
  straight, resumed = str(tmp_path / "a"), str(tmp_path / "b")
  common = {"optimizer.schedule": "constant"}
  train.train_and_evaluate(micro_config(**common, num_steps=4), straight)
  train.train_and_evaluate(micro_config(**common, num_steps=2), resumed)  # "Interrupted" at 2.
  rows = train.train_and_evaluate(micro_config(**common, num_steps=4), resumed)
  a, b = _flat_export(straight), _flat_export(resumed)
  for path in a:
    np.testing.assert_allclose(a[path], b[path], rtol=1e-6, atol=1e-7, err_msg=path)
  evaluated = train.train_and_evaluate(micro_config(**common, num_steps=4, mode="eval"), resumed)
  assert evaluated["trained"]["psnr"] == pytest.approx(rows["trained"]["psnr"], abs=1e-6)


def _losses_and_params(num_devices, batches, **overrides):
  c = micro_config(**{"mesh.data": num_devices, "lora.enabled": True, **overrides})
  run = run_setup.build_run(c, "/tmp/unused", base=None)
  step_fn = run.train_step()
  state, losses = run.state, []
  for batch in batches:
    state, metrics = step_fn(state, run.frozen, sharding.global_batch(batch, run.mesh))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(sharding.gather(state.trainable, run.mesh)), state


def test_one_device_equals_eight_devices():
  assert jax.device_count() == 8, "conftest sets 8 simulated CPU devices"
  c = micro_config()
  data = iter(pipeline.make_train_dataset(c.data, seed=0, batch_size=c.batch_size))
  batches = [next(data) for _ in range(3)]
  losses1, params1, _ = _losses_and_params(1, batches)
  losses8, params8, _ = _losses_and_params(8, batches)
  np.testing.assert_allclose(losses1, losses8, rtol=1e-5)
  assert losses1[0] != losses1[-1]  # Training actually moved.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
               params1, params8)


@pytest.mark.parametrize("data,fsdp", [(2, 4), (-1, 8)])
def test_fsdp_equals_replicated(data, fsdp):
  """Parameters and optimizer moments split over 'fsdp' train to the same numbers as
  replicated ones, and really are split (each device holds 1/fsdp of a split leaf)."""
  c = micro_config()
  it = iter(pipeline.make_train_dataset(c.data, seed=0, batch_size=c.batch_size))
  batches = [next(it) for _ in range(3)]
  losses1, params1, _ = _losses_and_params(
      1, batches, **{"lora.enabled": False})
  lossesf, paramsf, state = _losses_and_params(
      data, batches, **{"lora.enabled": False, "mesh.fsdp": fsdp, "mesh.fsdp_min_size": 1})
  np.testing.assert_allclose(losses1, lossesf, rtol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
               params1, paramsf)
  kernel = state.trainable["base"]["encoders_0_0"]["conv1"]["kernel"]  # (1, 1, 8, 16)
  assert kernel.sharding.spec == sharding.P(None, None, None, sharding.FSDP)
  assert kernel.addressable_shards[0].data.shape == (1, 1, 8, 16 // fsdp)
  mu_kernels = [x for x in jax.tree.leaves(state.opt_state) if x.shape == kernel.shape]
  assert mu_kernels and all(m.sharding.spec == kernel.sharding.spec for m in mu_kernels)


def test_nan_loss_stops_without_checkpointing_the_bad_state(tmp_path):
  # The parameter bound is lifted so the run gets as far as a non-finite loss (with it, the
  # huge state of step 1 is refused first: tests/test_faults_train.py).
  c = micro_config(**{"optimizer.learning_rate": 1e35, "optimizer.schedule": "constant",
                      "checkpoint_every": 1, "log_every": 1,
                      "guard.max_param_abs": float("inf")})
  with pytest.raises(FloatingPointError, match=r"at step \d+; stopping without") as error:
    train.train_and_evaluate(c, str(tmp_path))
  bad_step = int(re.search(r"at step (\d+)", str(error.value)).group(1))
  steps = checkpoint.manager(str(tmp_path)).all_steps()
  assert steps and all(s < bad_step for s in steps), (steps, bad_step)
  assert not (tmp_path / "export").exists()


def test_checkpoint_of_another_architecture_is_named(tmp_path):
  train.train_and_evaluate(micro_config(num_steps=2), str(tmp_path))
  with pytest.raises(ValueError, match=r"different architecture:\n  width: checkpoint has 8"):
    train.train_and_evaluate(micro_config(num_steps=4, **{"model.width": 12}), str(tmp_path))


def test_unknown_config_key_is_an_error_listing_valid_keys(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "sr_jax.main", "--config", "configs/lora_nafnet.py:demo",
       "--workdir", str(tmp_path), "--config.lora.rnak=3"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "rnak" in proc.stderr and "rank" in proc.stderr
  proc = subprocess.run(
      [sys.executable, "-m", "sr_jax.main", "--config", "configs/lora_nafnet.py:dmeo",
       "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "valid variants: ['demo']" in proc.stderr


def test_prod_pretraining_writes_the_data_grid_and_a_base_that_lora_loads(tmp_path):
  """configs/prod_nafnet.py:demo (micro) -> export/params -> lora_nafnet's base.checkpoint."""
  from configs import prod_nafnet  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  c = prod_nafnet.get_config("demo")
  c.model.preset, c.num_steps, c.checkpoint_every, c.log_every = "micro", 2, 2, 1
  c.data.crop_size, c.data.eval_max_size, c.batch_size = 32, 48, 8
  prod_dir = tmp_path / "prod"
  rows = train.train_and_evaluate(c, str(prod_dir))
  assert set(rows) == {"degraded input", "trained"}
  tags = set()
  for events in glob.glob(str(prod_dir / "events.out.tfevents*")):
    for event in tf.compat.v1.train.summary_iterator(events):
      tags |= {v.tag for v in event.summary.value}
  assert {"data/degradations", "timing/data_wait_fraction", "train/loss"} <= tags
  tuned = micro_config(**{"lora.enabled": True, "num_steps": 1,
                          "base.checkpoint": str(prod_dir / "export" / "params")})
  rows = train.train_and_evaluate(tuned, str(tmp_path / "lora"))
  assert set(rows) == {"degraded input", "base", "lora"}
  # The fine-tuning run started from the PROD base: its frozen depthwise kernels are PROD's.
  np.testing.assert_array_equal(_flat_export(prod_dir)["encoders_0_0/conv2/kernel"],
                                _flat_export(tmp_path / "lora")["encoders_0_0/conv2/kernel"])


def test_resuming_with_another_worker_count_is_an_error_naming_both():
  saved = {"config": json.dumps({"data": {"num_workers": 2}})}
  resume.check_data_workers(saved, 2, "/w")
  with pytest.raises(ValueError, match=r"num_workers=2, but this run has data.num_workers=0.*"
                                       r"--config.data.num_workers=2"):
    resume.check_data_workers(saved, 0, "/w")


def test_eval_mode_on_a_workdir_without_a_run_fails_at_once_naming_what_is_missing(tmp_path):
  c = micro_config(mode="eval", **{"base.num_steps": 2})
  with pytest.raises(FileNotFoundError) as error:
    train.train_and_evaluate(c, str(tmp_path))
  message = str(error.value)
  assert "--config.mode=eval evaluates a finished run" in message
  assert f"pre-trained base {tmp_path}/base/export/params (2 steps)" in message
  assert f"a checkpoint in {tmp_path}/checkpoints" in message
  assert not (tmp_path / "base").exists()  # Nothing was pre-trained.


def test_the_console_is_a_page_with_progress_titles_and_no_echoed_scalars(tmp_path):
  """The CLI on a micro job: a config summary, stage counter, compile line, one line per log
  interval with a labelled loss and an ETA, titled tables; no YAML dump or hparams line."""
  proc = subprocess.run(
      [sys.executable, "-m", "sr_jax.main", "--config", "configs/lora_nafnet.py:demo",
       "--workdir", str(tmp_path), "--config.model.preset=micro", "--config.data.crop_size=32",
       "--config.data.eval_max_size=48", "--config.base.num_steps=4", "--config.num_steps=4",
       "--config.log_every=2", "--config.checkpoint_every=4", "--config.eval_every=2"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = proc.stdout + proc.stderr
  assert "job lora_nafnet: pixel objective, nafnet 'micro'" in text
  assert "stage 1/2: base stage (4 steps)" in text and "stage 2/2: training (4 steps)" in text
  assert text.count("compiling the train step...") == 2
  assert re.search(r"step 4/4 \(100%\): loss \(-PSNR, dB\) -?\d[\d.]*, .*; [\d.]+ steps/s, "
                   r"ETA 0 s", text)
  assert "step 2: held-out PSNR" in text  # eval_every.
  assert "evaluating lora on 3 held-out image(s)..." in text
  assert re.search(r"exporting to .*/export: done in", text)
  assert "=== base stage (" in text and "=== final results (" in text
  assert (tmp_path / "config.yaml").exists() and (tmp_path / "base" / "config.yaml").exists()
  for noise in ("Hyperparameters", "steps_per_sec=", "train/loss=", "blur_kernel_size:",
                "Setting work unit notes", "Unable to initialize backend", "overriding jax"):
    assert noise not in text, noise
  assert len(text.splitlines()) < 80, text
