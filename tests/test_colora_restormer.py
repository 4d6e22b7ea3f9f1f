"""configs/colora_restormer.py end to end: an official-format Restormer checkpoint is converted,
used as the CoLoRA job's base, adapted, and the adapter restores an image through sr_jax.infer.

Steps and sizes are tiny (the job's stages are tested in depth on NAFNet in test_colora.py);
what this asserts is that every stage accepts Restormer: its depthwise convs get no adapter,
its attention temperatures are tuned within the budget, and the artefacts fit together.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from configs import colora_restormer
from sr_jax import convert, infer
from sr_jax.adapt import adapters
from sr_jax.convert import mapping, restormer as restormer_keys
from sr_jax.jobs import colora_job
from sr_jax.models import registry
from sr_jax.util import trees


def _official_checkpoint(path):
  """A micro Restormer in the official key layout, as a .safetensors file."""
  model = registry.entry("restormer").build("micro")
  params = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3)))["params"]
  flat = {p: np.asarray(v) for p, v in trees.flatten(params).items()}
  save_file(mapping.export(flat, restormer_keys.RULES, restormer_keys.BROADCAST), str(path))


def _tiny(config, base_dir):
  config.base.checkpoint = base_dir
  config.data.crop_size, config.data.eval_max_size, config.batch_size = 32, 32, 8
  config.num_steps, config.colora.probe_steps = 2, 2
  config.colora.faig_steps, config.colora.faig_images = 2, 4
  config.log_every, config.checkpoint_every, config.num_image_summaries = 1, 2, 0
  return config


def test_converted_restormer_runs_the_colora_job_and_infers(tmp_path):
  src = tmp_path / "restormer_micro.safetensors"
  _official_checkpoint(src)
  conversion = convert.convert_file("restormer", src, tmp_path / "base")
  assert conversion.preset == "micro"
  config = _tiny(colora_restormer.get_config("demo"), str(tmp_path / "base"))
  rows = colora_job.run(config, str(tmp_path / "job"))
  assert list(rows) == ["degraded input", "base", "CoLoRA"]
  assert 0 < rows["CoLoRA"]["trainable_pct"] <= 100 * config.colora.budget + 1e-6

  plan = json.loads((tmp_path / "job" / "faig" / "allocation_colora.json").read_text())
  assert plan["trainable_params"] == rows["CoLoRA"]["trainable"]
  assert plan["ranks"] and not any("dwconv" in p for p in plan["ranks"])
  adapter = adapters.load_adapter(str(tmp_path / "job" / "colora" / "export" / "adapters"))
  tuned = trees.flatten(adapter.tuned_base)
  assert any(p.endswith("attn/temperature") for p in tuned)
  assert any(p.endswith("norm1/bias") for p in tuned)

  # The adapter restores an odd-sized image in overlapping tiles (multiples of 8).
  image = (np.random.default_rng(0).random((37, 45, 3)) * 255).astype(np.uint8)
  Image.fromarray(image).save(tmp_path / "in.png")
  infer.run(str(tmp_path / "base"), str(tmp_path / "job" / "colora" / "export" / "adapters"),
            str(tmp_path / "in.png"), str(tmp_path / "out.png"), tile=24, overlap=8)
  restored = np.asarray(Image.open(tmp_path / "out.png"))
  assert restored.shape == image.shape
  with pytest.raises(ValueError, match="multiple of 8"):
    infer.run(str(tmp_path / "base"), None, str(tmp_path / "in.png"),
              str(tmp_path / "out2.png"), tile=20, overlap=4)
