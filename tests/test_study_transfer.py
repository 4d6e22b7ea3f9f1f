"""The study as a domain transfer with GAN arms (configs/esrgan_lora.py:transfer): no test image
ever reaches fine-tuning or a rate choice, each arm trains with its objective, a GAN arm's rate
follows validation LPIPS, and the report's gains are the per-seed differences."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from configs import esrgan_lora
from sr_jax import objectives
from sr_jax.data import choose_source, pipeline, sources
from sr_jax.models import registry
from sr_jax.study import __main__ as study_main, arms as arms_lib, splits as splits_lib, table
from sr_jax.train import run_setup


def _folder(path, names):
  path.mkdir()
  rng = np.random.default_rng(len(names))
  for name in names:
    Image.fromarray(rng.integers(0, 255, (80, 80, 3), np.uint8)).save(path / name)
  return str(path)


def _transfer(tmp_path, **overrides):
  c = esrgan_lora.get_config("transfer")
  c.update_from_flattened_dict(dict({
      "data.train_dir": _folder(tmp_path / "manga", [f"page{i:02d}.png" for i in range(10)]),
      "eval.general_set": _folder(tmp_path / "photos", [f"photo{i}.png" for i in range(4)]),
      "study.train_images": 4, "study.val_images": 2, "study.test_images": 3,
      "study.general_images": 2, "study.full_learning_rates": (1e-4, 1e-3),
      "study.lora_learning_rates": (1e-3, 1e-2)}, **overrides))
  return c


def _original(link_name: str) -> str:
  """A split folder's link 't003_page07.png' -> 'page07.png'."""
  return link_name.split("_", 1)[1]


def test_no_test_image_reaches_fine_tuning_or_a_rate_choice_in_any_gan_or_l1_arm(tmp_path):
  c = _transfer(tmp_path)
  arms_lib.check_study(c)
  splits = splits_lib.make_splits(c, str(tmp_path / "w"))
  assert (len(splits.train), len(splits.val), len(splits.test), len(splits.general)) == (
      4, 2, 3, 2)
  parts = [set(splits.train), set(splits.val), set(splits.test), set(splits.general)]
  assert all(not a & b for i, a in enumerate(parts) for b in parts[i + 1:])
  bconfig = study_main.base_config(c, splits)
  base = run_setup.init_base(registry.build_model(bconfig.model), 32, jax.random.PRNGKey(0))
  calls = []

  def trainer(config, workdir):  # Records what each run would read; scores by its rate.
    lr = config.optimizer.learning_rate
    calls.append(dict(
        arm=config.job.split("/")[2], objective=config.objective, split=config.data.eval_split,
        trained={_original(n) for n in choose_source.make_source(config.data, "train").names},
        scored=[_original(x["name"]) for x in pipeline.make_eval_set(config.data, seed=0)],
        general=([_original(p.name) for p in sources.list_image_files(config.eval.general_set)]
                 if config.eval.general_set else []), niqe=config.eval.niqe))
    tuned = {"psnr": 25 + np.log10(lr) + config.seed, "ssim": 0.8, "lpips_alex": 0.3 + lr,
             "trainable_pct": 20.0}
    rows = {"bicubic": {"psnr": 24.0, "ssim": 0.7, "lpips_alex": 0.4},
            "base": {"psnr": 20.0, "ssim": 0.6, "lpips_alex": 0.5}, "tuned": tuned}
    if config.eval.general_set:
      rows["base @ general set"] = {"psnr": 27.0, "ssim": 0.8, "lpips_alex": 0.2}
      rows["tuned @ general set"] = {"psnr": 26.0 - config.seed, "ssim": 0.8,
                                     "lpips_alex": 0.25}
    return rows

  results, chosen = study_main.run_task(bconfig, str(tmp_path / "w"), "domain", splits,
                                        "unused", base, None, trainer)
  # Four arms (full and LoRA, each with L1 and GAN); two candidate rates each, then 2 seeds.
  assert {(k["arm"], k["objective"]) for k in calls} == {
      ("full+pixel", "pixel"), ("uniform@20%+pixel", "pixel"), ("full+gan", "gan"),
      ("uniform@20%+gan", "gan")}
  assert len(calls) == 4 * (2 + 2)
  for call in calls:
    assert call["trained"] == set(splits.train)  # Never a validation, test or general image.
    if call["split"] == "val":  # Rates are chosen on the validation images alone.
      assert sorted(call["scored"]) == sorted(splits.val)
      assert not call["general"] and not call["niqe"]
    else:
      assert sorted(call["scored"]) == sorted(splits.test)
      assert sorted(call["general"]) == sorted(splits.general)
  # PSNR prefers the higher rate, LPIPS the lower: each objective chooses by its own metric.
  assert chosen == {"full+pixel": 1e-3, "uniform@20%+pixel": 1e-2, "full+gan": 1e-4,
                    "uniform@20%+gan": 1e-3}
  selection = json.loads((tmp_path / "w" / "domain" / "full+gan" / "selection.json")
                         .read_text())
  assert selection["metric"] == "-lpips_alex" and selection["chosen"] == 1e-4
  assert list(results)[:2] == ["bicubic", "base"]
  assert results["base"][0]["general"]["psnr"] == 27.0
  assert [r["general"]["psnr"] for r in results["full+gan"]] == [26.0, 25.0]

  text = table.markdown({"domain": results}, {"domain": chosen}, splits.to_json(), [])
  # LoRA+pixel at 1e-2 against full+pixel at 1e-3: +1 dB on each seed; against the base:
  # 25 + log10(1e-2) + seed - 20 = +3 and +4 dB.
  assert "| domain | uniform@20%+pixel | full+pixel | +1.00 +- 0.00 |" in text
  assert "| domain | uniform@20%+pixel | base | +3.50 +- 0.71 |" in text
  assert "general PSNR (dB)" in text and "- general (2): " in text


def test_a_general_set_image_among_the_new_domains_images_is_an_error(tmp_path):
  c = _transfer(tmp_path)
  c.eval.general_set = c.data.train_dir  # The photos folder replaced by the domain's own.
  with pytest.raises(ValueError, match="general set .* overlap"):
    splits_lib.make_splits(c, str(tmp_path / "w"))


def test_unknown_objectives_and_a_gan_arm_without_a_discriminator_are_errors():
  from configs import colora_nafnet  # pylint: disable=g-import-not-at-top
  c = colora_nafnet.get_config("study_quick")
  c.study.objectives = ("pixel", "diffusion")
  with pytest.raises(ValueError, match=r"Unknown study.objectives \['diffusion'\]"):
    arms_lib.check_study(c)
  c.study.objectives = ("gan",)
  with pytest.raises(ValueError, match="gan.discriminator is empty"):  # No GAN section at all.
    arms_lib.check_study(c)
  c.gan = objectives.sections()["gan"]()
  c.gan.discriminator = ""
  with pytest.raises(ValueError, match="gan.discriminator is empty"):
    arms_lib.check_study(c)


def test_the_range_arm_fine_tunes_the_data_end_of_a_diffusion_chain_at_full_rates():
  from configs import colora_nafnet, resshift_finetune  # pylint: disable=g-import-not-at-top
  c = resshift_finetune.get_config("study")
  arms_lib.check_study(c)
  by_label = {a.label: a for a in arms_lib.arms(c, "domain")}
  assert list(by_label) == ["full", "uniform@5%", "range"]
  arm = by_label["range"]
  assert arms_lib.learning_rates(c, arm) == tuple(c.study.full_learning_rates)
  run = arms_lib.run_config(c, arm, "", 2e-4, 1, "eval")
  assert not run.lora.enabled and run.optimizer.learning_rate == 2e-4
  assert (run.resshift.t_min, run.resshift.t_max, run.resshift.base_outside_range) == (
      1, c.study.range_t_max, True)
  assert run.resshift.kappa == 16.0  # The chain the demo base was trained with.
  full = arms_lib.run_config(c, by_label["full"], "", 2e-4, 1, "eval")
  assert (full.resshift.t_min, full.resshift.t_max) == (1, 0)  # The whole chain.
  nafnet = colora_nafnet.get_config("study_quick")
  nafnet.study.arms = ("full", "range")
  with pytest.raises(ValueError, match="'range'.*needs one of"):
    arms_lib.check_study(nafnet)
