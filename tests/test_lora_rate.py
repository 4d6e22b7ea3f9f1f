"""sr_jax.tools.lora_rate: the multiplier is chosen on the validation split alone, a pre-trained
base is reused, a GAN job chooses by LPIPS, and bad input is refused up front."""

import json

import numpy as np
import pytest

from configs import esrgan_lora, lora_nafnet
from sr_jax.tools import lora_rate


def test_each_candidate_scores_the_validation_split_and_later_ones_reuse_the_base(tmp_path):
  config = lora_nafnet.get_config("demo")
  seen = []

  def trainer(c, workdir):
    seen.append((c.lora.learning_rate_multiplier, c.data.eval_split, c.data.val_images,
                 c.base.checkpoint))
    (tmp_path / "m1" / "base" / "export" / "params").mkdir(parents=True, exist_ok=True)
    m = c.lora.learning_rate_multiplier
    return {"base": {"psnr": 20.0}, "lora": {"psnr": 27.0 - abs(np.log10(m / 3)),
                                             "ssim": 0.7}}

  record = lora_rate.choose(config, str(tmp_path), [1.0, 3.0, 10.0], 2, trainer)
  assert record["chosen"] == 3.0 and record["metric"] == "psnr"
  base = str(tmp_path / "m1" / "base" / "export" / "params")
  assert seen == [(1.0, "val", 2, ""), (3.0, "val", 2, base), (10.0, "val", 2, base)]
  assert json.loads((tmp_path / "choice.json").read_text())["chosen"] == 3.0
  table = (tmp_path / "choice.md").read_text()
  lr = config.optimizer.learning_rate
  assert f"| 3 | {3 * lr:g} | 27.00 | 0.7000 | yes |" in table


def test_a_gan_job_chooses_by_lpips_and_bad_input_is_refused(tmp_path):
  config = esrgan_lora.get_config("demo")

  def trainer(c, workdir):
    m = c.lora.learning_rate_multiplier
    return {"lora": {"psnr": 28.0 + m, "ssim": 0.8, "lpips_alex": 0.3 + 0.01 * m},
            "lora @ general set": {"psnr": 0.0, "ssim": 0.0, "lpips_alex": 0.0}}

  record = lora_rate.choose(config, str(tmp_path), [1.0, 3.0], 1, trainer)
  assert record["metric"] == "-lpips_alex" and record["chosen"] == 1.0
  assert record["validation"]["3"]["psnr"] == 31.0  # Not the general set's row.
  with pytest.raises(ValueError, match="--multipliers"):
    lora_rate.parse_multipliers("1,-3")
  with pytest.raises(ValueError, match="val_images"):
    lora_rate.choose(config, str(tmp_path), [1.0], 0, trainer)
  config.lora.enabled = False
  with pytest.raises(ValueError, match="trains no adapters"):
    lora_rate.choose(config, str(tmp_path), [1.0], 1, trainer)
