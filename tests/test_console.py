"""What a run prints and draws: progress lines and their ETAs, FAIG's progress, labelled
pictures (eval strips, the rank chart, the degradation preview)."""

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import ImageDraw, Image

from sr_jax.adapt import faig
from sr_jax.data import preview
from sr_jax.jobs import colora_job
from sr_jax.models import nafnet
from sr_jax.quality import evaluate
from sr_jax.util import console, plots


@pytest.fixture
def absl_info(caplog):
  caplog.set_level(logging.INFO, logger="absl")
  return caplog


def test_duration_reads_as_minutes_and_hours():
  assert [console.duration(s) for s in (4.4, 65, 3725, float("inf"))] == [
      "4 s", "1m05s", "1h02m", "?"]


def test_step_progress_times_from_the_first_finished_step(monkeypatch):
  clock = iter([100.0, 110.0, 110.0])  # start(), then two reads at the log.
  monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
  progress = console.StepProgress(400, "-PSNR, dB")
  assert progress.line(1, {"loss": -20.0}).endswith("loss (-PSNR, dB) -20")  # No rate yet.
  progress.start(1)
  # 24 steps in 10 s after the first finished one: 2.4 steps/s, 375 steps left = 2m36s.
  assert progress.rate(25) == pytest.approx(2.4)
  assert progress.line(25, {"loss": -13.27, "psnr": 13.27}) == (
      "step 25/400 (6%): loss (-PSNR, dB) -13.27, psnr 13.27; 2.40 steps/s, ETA 2m36s")


def test_counter_reports_the_first_piece_then_tenths_with_a_compile_free_rate(monkeypatch,
                                                                             absl_info):
  now = [0.0]
  monkeypatch.setattr(time, "perf_counter", lambda: now[0])
  counter = console.Counter("FAIG", "path points", 100)
  now[0] = 30.0  # The first piece: compilation (29 s) and 10 points (1 s).
  counter(10)
  for done in range(20, 101, 10):
    now[0] += 0.1 * 10  # 0.1 s per point from here on.
    counter(done)
  lines = [r.getMessage() for r in absl_info.records]
  assert lines[0] == "FAIG: 10/100 path points (the first 10, compilation included, took 30 s)."
  assert lines[1] == "FAIG: 20/100 path points, 0.10 s each, 8 s left."
  assert lines[-1] == "FAIG: 100/100 path points, 0.10 s each, 0 s left."
  assert len(lines) == 10


def test_stages_count_and_phases_time(absl_info):
  stages = console.Stages(["PROD base stage", "probe", "FAIG", "CoLoRA arm"])
  stages.begin("PROD base stage", "1500 steps")
  stages.begin("probe")
  stages.begin("FAIG")
  with console.phase("exporting"):
    pass
  lines = [r.getMessage() for r in absl_info.records]
  assert lines[:3] == ["stage 1/4: PROD base stage (1500 steps)", "stage 2/4: probe",
                       "stage 3/4: FAIG"]
  assert lines[3] == "exporting..." and lines[4].startswith("exporting: done in 0 s")


def _tiny_problem():
  model = nafnet.NAFNet(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))
  base = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  tuned = jax.tree.map(lambda x: x + 0.05, base)
  rng = np.random.default_rng(0)
  lq, gt = rng.random((2, 16, 16, 3), np.float32), rng.random((2, 16, 16, 3), np.float32)
  return (lambda p, x: model.apply({"params": p}, x)), base, tuned, lq, gt


def test_faig_in_pieces_reports_progress_and_equals_one_program():
  apply_fn, base, tuned, lq, gt = _tiny_problem()
  whole = faig.integrated_gradients(apply_fn, base, tuned, lq, gt, steps=7)
  done = []
  pieces = faig.integrated_gradients(apply_fn, base, tuned, lq, gt, steps=7,
                                     progress=done.append)
  assert done == [1, 2, 3, 4, 5, 6, 7]  # About ten pieces: ceil(7 / 10) = 1 point each.
  scale = max(float(np.max(v)) for v in jax.tree.leaves(whole))
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(pieces)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)


def _text_pixels(image: np.ndarray) -> int:
  return int(np.sum(np.any(image < 200, axis=-1)))


def test_eval_strips_name_input_output_and_target():
  lq = np.full((8, 8, 3), 0.25, np.float32)  # An x2 SR input: shown enlarged.
  out, gt = np.full((16, 16, 3), 0.5, np.float32), np.full((16, 16, 3), 0.75, np.float32)
  grid = evaluate.image_grid(lq, out, gt)
  caption, panels = grid[:14], grid[14:]
  assert grid.shape == (14 + 16, 48, 3)
  np.testing.assert_array_equal(panels[:, :16], 0.25)
  np.testing.assert_array_equal(panels[:, 16:32], 0.5)
  np.testing.assert_array_equal(panels[:, 32:], 0.75)
  for k in range(3):  # Each panel has a caption over it.
    assert _text_pixels((caption[:, 16 * k:16 * (k + 1)] * 255).astype(np.uint8)) > 5


def test_rank_chart_follows_network_order_and_marks_capped_layers():
  order = colora_job.network_order(nafnet.block_order)
  paths = ["ending/kernel", "decoders_0_0/conv1/kernel", "intro/kernel",
           "encoders_0_0/conv10/kernel", "encoders_0_0/conv2/kernel", "middle_blks_0/conv1/kernel",
           "downs_0/kernel"]
  assert sorted(paths, key=order) == [
      "intro/kernel", "encoders_0_0/conv2/kernel", "encoders_0_0/conv10/kernel",
      "downs_0/kernel", "middle_blks_0/conv1/kernel", "decoders_0_0/conv1/kernel",
      "ending/kernel"]
  chart = plots.bar_chart(["a", "b"], [4, 2], "ranks", marked=[True, False],
                          marked_note="at its cap")
  colours = {tuple(p) for p in chart.reshape(-1, 3)}
  assert plots.MARKED_COLOUR in colours and plots.BAR_COLOUR in colours
  plain = plots.bar_chart(["a", "b"], [4, 2], "ranks")
  assert plots.MARKED_COLOUR not in {tuple(p) for p in plain.reshape(-1, 3)}


def test_preview_captions_are_whole_and_fit_their_tile():
  font = preview._FONT  # pylint: disable=protected-access
  label = ("prod: gaussian_blur(sigma=2.91) > motion_blur(length=13.2, angle=121) > "
           "gaussian_noise(sigma=17.5) > jpeg(quality=41) > rain(density=0.0071)")
  lines = preview.wrap_label(label, 124, font)
  assert "".join(lines).replace(" ", "") == label.replace(" ", "")  # Nothing cut off.
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
  assert all(measure(line, font=font) <= 124 for line in lines)
  assert len(lines) > 3  # The old three-line strip clipped this caption.
