"""The adaptation study: splits that never overlap the reported images, the learning-rate choice,
clear errors, and a whole (micro) study that resumes after an interruption."""

import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import colora_nafnet
from sr_jax.data import choose_source, pipeline
from sr_jax.jobs import train
from sr_jax.study import (__main__ as study_main, arms as arms_lib, select, splits as splits_lib,
                          table)


def _quick(**overrides) -> ml_collections.ConfigDict:
  c = colora_nafnet.get_config("study_quick")
  c.batch_size = 8
  c.update_from_flattened_dict(overrides)
  return c


def test_embedded_validation_split_never_overlaps_training_or_reported_images(tmp_path):
  c = _quick()
  splits = splits_lib.make_splits(c, str(tmp_path))
  assert splits.val and splits.train and splits.test
  assert not set(splits.val) & set(splits.train)
  assert not set(splits.val) & set(splits.test) and not set(splits.train) & set(splits.test)
  data = ml_collections.ConfigDict(c.data.to_dict())
  data.update(splits.data)
  assert set(choose_source.make_source(data, "train").names) == set(splits.train)
  assert set(choose_source.make_source(data, "val").names) == set(splits.val)
  data.eval_split = "val"
  assert [x["name"] for x in pipeline.make_eval_set(data, seed=0)] == list(splits.val)
  data.eval_split = "eval"
  assert [x["name"] for x in pipeline.make_eval_set(data, seed=0)] == list(splits.test)
  assert json.loads((tmp_path / "splits.json").read_text())["val"] == list(splits.val)


def _folder(path, names):
  path.mkdir()
  for i, name in enumerate(names):
    Image.fromarray(np.full((40, 40, 3), 10 * i, np.uint8)).save(path / name)
  return str(path)


def test_folder_splits_are_disjoint_and_a_shared_test_image_is_an_error(tmp_path):
  train_dir = _folder(tmp_path / "train", [f"{i:02d}.png" for i in range(10)])
  test_dir = _folder(tmp_path / "test", ["a.png", "b.png"])
  c = _quick(**{"data.source": "folder", "data.train_dir": train_dir,
                "data.eval_dir": test_dir, "study.base_images": 3, "study.train_images": 4,
                "study.val_images": 2})
  splits = splits_lib.make_splits(c, str(tmp_path / "w"))
  parts = [set(splits.base), set(splits.train), set(splits.val)]
  assert [len(p) for p in parts] == [3, 4, 2]
  assert all(not a & b for i, a in enumerate(parts) for b in parts[i + 1:])
  data = ml_collections.ConfigDict(c.data.to_dict())
  data.update(splits.data)
  # The training folder lists the validation images last, so val_images carves exactly them.
  val_names = [n.split("_", 1)[1] for n in choose_source.make_source(data, "val").names]
  assert sorted(val_names) == sorted(splits.val)
  shared = _folder(tmp_path / "shared", ["05.png"])
  c.data.eval_dir = shared
  with pytest.raises(ValueError, match="test images overlap"):
    splits_lib.make_splits(c, str(tmp_path / "w2"))
  c.data.eval_dir, c.study.train_images = test_dir, 9
  with pytest.raises(ValueError, match="holds 10 images"):
    splits_lib.make_splits(c, str(tmp_path / "w3"))


def test_one_folder_split_four_ways_keeps_the_test_images_out_of_every_choice(tmp_path):
  """No evaluation folder: the test images are cut from the same fixed shuffle, disjoint from
  base, fine-tuning and validation images, the same on every call, and only the test folder
  holds them (rate selection reads the training folder's last val_images)."""
  pages = _folder(tmp_path / "pages", [f"p{i:02d}.png" for i in range(12)])
  c = _quick(**{"data.source": "folder", "data.train_dir": pages, "data.eval_dir": "",
                "study.base_images": 0, "study.train_images": 5, "study.val_images": 3,
                "study.test_images": 4})
  first = splits_lib.make_splits(c, str(tmp_path / "w"))
  again = splits_lib.make_splits(c, str(tmp_path / "w2"))
  assert first.to_json() == again.to_json()
  parts = [set(first.train), set(first.val), set(first.test)]
  assert [len(p) for p in parts] == [5, 3, 4] and not first.base
  assert len(set().union(*parts)) == 12
  data = ml_collections.ConfigDict(c.data.to_dict())
  data.update(first.data)
  chosen_on = {n.split("_", 1)[1] for split in ("train", "val")
               for n in choose_source.make_source(data, split).names}
  assert chosen_on == parts[0] | parts[1] and not chosen_on & parts[2]
  data.eval_split = "eval"
  assert {x["name"].split("_", 1)[1] for x in pipeline.make_eval_set(data, seed=0)} == parts[2]
  c.study.test_images = 0
  with pytest.raises(ValueError, match="set study.test_images"):
    splits_lib.make_splits(c, str(tmp_path / "w3"))
  c.study.test_images = 5
  with pytest.raises(ValueError, match=r"\+ test_images = 13, but .* holds 12 images"):
    splits_lib.make_splits(c, str(tmp_path / "w4"))


def test_unknown_arms_tasks_and_empty_splits_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match=r"Unknown study.arms \['dora'\]"):
    arms_lib.check_study(_quick(**{"study.arms": ("full", "dora")}))
  with pytest.raises(ValueError, match=r"Unknown study.tasks \['fog'\].*'haze'"):
    arms_lib.check_study(_quick(**{"study.tasks": ("fog",), "study.curve_tasks": ()}))
  with pytest.raises(ValueError, match="among the base's own degradations"):
    arms_lib.check_study(_quick(**{"study.tasks": ("jpeg",), "study.curve_tasks": ()}))
  with pytest.raises(ValueError, match="leaves none of the 9 embedded"):
    splits_lib.make_splits(_quick(**{"study.val_images": 9}), str(tmp_path))


def test_rate_selection_picks_the_best_validation_score_and_never_the_test_images(tmp_path):
  """A toy trainer whose validation PSNR peaks at 3e-3 (and whose test PSNR would prefer
  1e-2, to show the test split takes no part in the choice)."""
  seen = []

  def trainer(config, workdir):
    lr = config.optimizer.learning_rate
    seen.append((lr, config.data.eval_split))
    score = -abs(np.log10(lr / 3e-3)) if config.data.eval_split == "val" else np.log10(lr)
    return {"lora": {"psnr": 30 + score, "ssim": 0.9, "trainable_pct": 7.0}}

  c = _quick(**{"study.lora_learning_rates": (1e-3, 3e-3, 1e-2)})
  arm = arms_lib.Arm("uniform", 0.07)
  chosen = select.select_rate(c, str(tmp_path), "haze", arm, "", 0, trainer)
  assert chosen == 3e-3
  assert seen == [(1e-3, "val"), (3e-3, "val"), (1e-2, "val")]
  record = json.loads((tmp_path / "haze" / "uniform@7pct" / "selection.json").read_text())
  assert record["chosen"] == 3e-3
  assert select.choose({1e-3: 20.0, 3e-3: 20.0}) == 1e-3  # The first of equals.
  assert table.mean_std([20.0, 22.0]) == "21.00 +- 1.41"


class Interrupt(Exception):
  pass


def test_a_micro_study_runs_writes_its_report_and_resumes_after_an_interruption(tmp_path):
  c = _quick(**{"study.seeds": (0,), "study.curve_tasks": (), "study.arms": ("full", "colora"),
                "study.full_learning_rates": (1e-3,), "study.lora_learning_rates": (3e-3,)})
  calls = []

  def dies_after_three(config, workdir):
    if len(calls) == 3:
      raise Interrupt()
    calls.append(workdir)
    return train.train_and_evaluate(config, workdir)

  with pytest.raises(Interrupt):
    study_main.run(c, str(tmp_path), trainer=dies_after_three)
  finished = {d: os.path.getmtime(os.path.join(d, "export", "params", "meta.json"))
              for d in calls}
  text = study_main.run(c, str(tmp_path), ["python", "-m", "sr_jax.study"])
  for d, mtime in finished.items():  # Finished runs are resumed, not retrained or re-exported.
    assert os.path.getmtime(os.path.join(d, "export", "params", "meta.json")) == mtime
  assert "| haze | full |" in text and "| haze | colora@7% |" in text
  assert "Splits (fixed" in text and (tmp_path / "study.png").exists()
  assert (tmp_path / "study.md").read_text() == text
  selection = json.loads((tmp_path / "haze" / "full" / "selection.json").read_text())
  assert selection["chosen"] == 1e-3


def test_curve_points_reuse_the_main_budget_rate_when_told_and_choose_their_own_otherwise(
    tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from sr_jax.train import run_setup  # pylint: disable=g-import-not-at-top
  from sr_jax.models import registry  # pylint: disable=g-import-not-at-top
  seen = []

  def trainer(config, workdir):  # Validation peaks at 1e-2, whatever the budget.
    lr = config.optimizer.learning_rate
    seen.append((config.job.split("/")[2], lr, config.data.eval_split))
    return {"tuned": {"psnr": 30 + np.log10(lr), "ssim": 0.9, "trainable_pct": 7.0}}

  for select_rates, want_val in ((False, 2), (True, 4)):
    seen.clear()
    c = _quick(**{"study.arms": ("uniform",), "study.seeds": (0,),
                  "study.curve_select_rates": select_rates})
    base = run_setup.init_base(registry.build_model(c.model), 32, jax.random.PRNGKey(0))
    (tmp_path / str(select_rates)).mkdir()
    splits = splits_lib.make_splits(c, str(tmp_path / str(select_rates)))
    _, chosen = study_main.run_task(c, str(tmp_path / str(select_rates)), "haze", splits,
                                    "unused", base, None, trainer)
    assert chosen == {"uniform@7%": 1e-2, "uniform@15%": 1e-2}
    val = [s for s in seen if s[2] == "val"]
    assert len(val) == want_val  # Two candidates (study_quick) per arm that chooses.
    assert ("uniform@15%", 1e-2, "eval") in seen


def test_a_budget_too_small_for_the_biases_and_norms_trains_adapters_alone(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from sr_jax.adapt import colora, lora  # pylint: disable=g-import-not-at-top
  from sr_jax.train import run_setup
  from sr_jax.models import registry  # pylint: disable=g-import-not-at-top
  extras = {}

  def trainer(config, workdir):
    extras[config.job.split("/")[2]] = tuple(config.lora.extra_trainable)
    return {"tuned": {"psnr": 30.0, "ssim": 0.9, "trainable_pct": 1.0}}

  c = _quick(**{"study.arms": ("uniform",), "study.seeds": (0,), "study.curve_budgets": (0.01,),
                "study.curve_select_rates": False})
  base = run_setup.init_base(registry.build_model(c.model), 32, jax.random.PRNGKey(0))
  assert colora.fully_tuned(base, colora.EXTRA_TRAINABLE) > 0.01 * lora.count(base)
  splits = splits_lib.make_splits(c, str(tmp_path))
  results, _ = study_main.run_task(c, str(tmp_path), "haze", splits, "unused", base, None,
                                   trainer)
  assert list(results) == ["uniform@7%", "uniform@1%-adapters"]
  assert extras["uniform@7%"] == tuple(colora.EXTRA_TRAINABLE)
  assert extras["uniform@1%-adapters"] == ()
  plan = json.loads((tmp_path / "haze" / "allocations" / "uniform@1pct-adapters.json")
                    .read_text())
  assert plan["fixed_params"] == 0 and plan["extra_trainable"] == []
  assert 0 < plan["trainable_params"] <= plan["budget_params"] == int(0.01 * lora.count(base))


def test_a_diverging_candidate_rate_loses_the_choice_and_is_not_retrained(tmp_path):
  from sr_jax.train import guards  # pylint: disable=g-import-not-at-top
  trained = []

  def trainer(config, workdir):
    lr = config.optimizer.learning_rate
    trained.append(lr)
    if lr >= 1e-2:
      raise guards.Diverged(f"step 3: parameters of magnitude 1e12 at lr {lr:g}")
    return {"lora": {"psnr": 30 + np.log10(lr), "ssim": 0.9, "trainable_pct": 7.0}}

  c = _quick(**{"study.lora_learning_rates": (1e-3, 3e-3, 1e-2)})
  arm = arms_lib.Arm("uniform", 0.07)
  assert select.select_rate(c, str(tmp_path), "haze", arm, "", 0, trainer) == 3e-3
  record = json.loads((tmp_path / "haze" / "uniform@7pct" / "selection.json").read_text())
  assert record["diverged"] == ["0.01"] and list(record["validation_psnr"]) == ["0.001", "0.003"]
  trained.clear()
  assert select.select_rate(c, str(tmp_path), "haze", arm, "", 0, trainer) == 3e-3
  assert 1e-2 not in trained  # Resumed: the divergence is remembered, not trained again.
  c.study.lora_learning_rates = (1e-2, 3e-2)
  with pytest.raises(guards.Diverged, match="Every candidate learning rate of uniform@7%"):
    select.select_rate(c, str(tmp_path / "all"), "haze", arm, "", 0, trainer)
