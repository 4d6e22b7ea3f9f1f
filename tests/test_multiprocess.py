"""A real multi-process run: two `sr_jax.main --distributed` processes on localhost, 4 simulated
CPU devices each, talking through JAX's coordinator and CPU collectives (gloo).

Their training (each process reading its own half of every batch, parameters split over the
'fsdp' axis inside each process, checkpoints written collectively, a resume from them) must
equal one process with 8 devices and replicated parameters, to float tolerance.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from configs import lora_nafnet
from sr_jax.jobs import train
from sr_jax.util import exports, trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Micro NAFNet, 32-pixel crops, global batch 8: each process feeds 4 images to its 4 devices.
OVERRIDES = {"model.preset": "micro", "data.crop_size": 32, "data.eval_max_size": 48,
             "batch_size": 8, "base.num_steps": 0, "lora.enabled": False,
             "optimizer.schedule": "constant", "log_every": 1, "checkpoint_every": 2,
             "num_image_summaries": 1}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _flags(overrides):
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def _run_two_processes(workdir, num_steps):
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="true",
             CUDA_VISIBLE_DEVICES="")
  overrides = dict(OVERRIDES, num_steps=num_steps, **{"mesh.fsdp": 2, "mesh.fsdp_min_size": 1})
  procs = [subprocess.Popen(
      [sys.executable, "-m", "sr_jax.main", "--config", "configs/lora_nafnet.py:demo",
       "--workdir", str(workdir), "--distributed", f"--coordinator_address=localhost:{port}",
       "--num_processes=2", f"--process_id={i}", *_flags(overrides)],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=240)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for i, (p, out) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"
  return outputs


def _scalars(workdir, tag):
  """{step: value} of a TensorBoard scalar written by the run (process 0's events)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  values = {}
  for root, _, files in os.walk(workdir):
    if os.path.basename(root) in ("checkpoints",):
      continue
    for f in files:
      if "tfevents" not in f:
        continue
      for event in tf.compat.v1.train.summary_iterator(os.path.join(root, f)):
        for v in event.summary.value:
          if v.tag == tag:
            values[event.step] = float(tf.make_ndarray(v.tensor))
  return values


def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  multi, single = tmp_path / "multi", tmp_path / "single"
  # Two processes train 2 steps, checkpoint collectively and stop; two new processes resume
  # from that checkpoint to step 4.
  first = _run_two_processes(multi, num_steps=2)
  second = _run_two_processes(multi, num_steps=4)
  assert "Resumed from step 2" in second[0]
  assert "Resumed from step 2" not in second[1]  # Only process 0 logs at INFO.
  assert "step 3/4 " in second[0] and "step 3/4 " not in second[1]
  assert "| trained |" in second[0] and "| trained |" not in second[1]
  assert "FSDP:" in first[0]

  config = lora_nafnet.get_config("demo")
  config.update_from_flattened_dict(dict(OVERRIDES, num_steps=4))
  rows = train.train_and_evaluate(config, str(single))
  want, got = _scalars(single, "train/loss"), _scalars(multi, "train/loss")
  assert sorted(want) == sorted(got) == [1, 2, 3, 4]
  np.testing.assert_allclose([got[s] for s in range(1, 5)], [want[s] for s in range(1, 5)],
                             rtol=1e-5)
  assert want[1] != want[4]  # Training moved.
  a = trees.flatten(exports.load_params(str(single / "export" / "params"))[0])
  b = trees.flatten(exports.load_params(str(multi / "export" / "params"))[0])
  assert a.keys() == b.keys()
  for path in a:
    np.testing.assert_allclose(b[path], a[path], rtol=1e-4, atol=1e-6, err_msg=path)
  assert (multi / "results.md").exists()
  psnr = float(next(line for line in (multi / "results.md").read_text().splitlines()
                    if line.startswith("| trained |")).split("|")[2])
  assert psnr == pytest.approx(rows["trained"]["psnr"], abs=0.01)


def test_distributed_flags_are_checked_before_starting(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "sr_jax.main", "--config", "configs/lora_nafnet.py:demo",
       "--workdir", str(tmp_path), "--distributed", "--num_processes=2"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode != 0
  assert "also needs --coordinator_address, --process_id" in proc.stderr
