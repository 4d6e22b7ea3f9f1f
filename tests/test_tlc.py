"""TLC (test-time local converter): local statistics in NAFNet/Restormer, seamless tiles."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from sr_jax import infer
from sr_jax.config.config_base import base_config
from sr_jax.data import ops, sources
from sr_jax.inference import tiling, tlc_inference
from sr_jax.models import registry, rrdbnet, tlc, tlc_attention
from sr_jax.quality import metrics
from sr_jax.util import exports


def _direct_local_mean(x: np.ndarray, window: int) -> np.ndarray:
  """TLC's pooling written out: each position takes the mean of the window x window block
  centred on it, shifted inward at the border (the replicate-padded valid positions)."""
  n, h, w, c = x.shape
  kh, kw = min(window, h), min(window, w)
  out = np.zeros_like(x, dtype=np.float64)
  for i in range(h):
    top = min(max(i - (kh - 1) // 2, 0), h - kh)
    for j in range(w):
      left = min(max(j - (kw - 1) // 2, 0), w - kw)
      out[:, i, j] = x[:, top:top + kh, left:left + kw].mean(axis=(1, 2))
  return out


@pytest.mark.parametrize("window", [1, 4, 5, 13, 16])
def test_local_mean_equals_a_direct_sliding_window_mean(window):
  x = np.random.default_rng(0).normal(size=(2, 13, 17, 3)).astype(np.float32)
  got = np.broadcast_to(np.asarray(tlc.local_mean(jnp.asarray(x), window)), x.shape)
  np.testing.assert_allclose(got, _direct_local_mean(x.astype(np.float64), window),
                             rtol=0, atol=2e-6)


@pytest.mark.parametrize("window", [0, 17, 40])
def test_a_window_covering_the_map_is_the_global_mean_bit_for_bit(window):
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 13, 17, 3)), jnp.float32)
  got = tlc.local_mean(x, window)
  assert got.shape == (2, 1, 1, 3)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.mean(x, axis=(1, 2),
                                                                     keepdims=True)))


def test_window_sizes_per_level():
  assert tlc.window_for(256) == 384 and tlc.window_for(64) == 96
  assert [tlc.level_window(384, s) for s in range(5)] == [384, 192, 96, 48, 24]
  assert tlc.level_window(0, 3) == 0  # Global stays global at every level.


@pytest.mark.parametrize("length,window,layout", [
    (100, 48, (6, 17, 8)), (100, 12, (1, 100, 12)), (50, 7, (1, 50, 6)), (40, 48, (40, 1, 1)),
    (50, 49, (6, 9, 8))])
def test_cell_layout(length, window, layout):
  axis = tlc_attention.cell_axis(length, window)
  assert (axis.cell, axis.cells, axis.span) == layout
  assert axis.span * axis.cell <= max(window, length) and axis.cells * axis.cell >= length


def _numpy_attention(q, k, v, temperature):
  """MDTA's core on (H, W, heads, c) float64 arrays (one image)."""
  h, w, heads, c = q.shape
  q, k, v = (t.reshape(h * w, heads, c) for t in (q, k, v))
  q = q / np.maximum(np.linalg.norm(q, axis=0, keepdims=True), 1e-12)
  k = k / np.maximum(np.linalg.norm(k, axis=0, keepdims=True), 1e-12)
  logits = np.einsum("phc,phd->hcd", q, k) * temperature[:, None, None]
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  return attn, v.reshape(h, w, heads, c)


def _bilinear(position, centres):
  """(lower index, upper index, upper weight) of a pixel between window centres, clamped."""
  t = np.interp(position + 0.5, centres, np.arange(len(centres)))
  lower = int(np.floor(t))
  return lower, min(lower + 1, len(centres) - 1), t - lower


def _direct_local_attention(q, k, v, temperature, window):
  """The windowed MDTA written out: attention of every window position over its own pixels,
  each pixel's matrix blended bilinearly between the window centres around it."""
  _, h, w, heads, c = q.shape
  rows, cols = (tlc_attention.cell_axis(n, window) for n in (h, w))
  attn = {}
  for a in range(rows.windows):
    for b in range(cols.windows):
      part = (0, slice(a * rows.cell, (a + rows.span) * rows.cell),
              slice(b * cols.cell, (b + cols.span) * cols.cell))
      attn[a, b] = _numpy_attention(q[part], k[part], v[part], temperature)[0]
  out = np.zeros((h, w, heads, c))
  for y in range(h):
    r0, r1, fr = _bilinear(y, rows.centres())
    for x in range(w):
      c0, c1, fc = _bilinear(x, cols.centres())
      blend = ((1 - fr) * (1 - fc) * attn[r0, c0] + (1 - fr) * fc * attn[r0, c1]
               + fr * (1 - fc) * attn[r1, c0] + fr * fc * attn[r1, c1])
      out[y, x] = np.einsum("hcd,hd->hc", blend, v[0, y, x])
  return out


@pytest.mark.parametrize("shape,window", [((1, 27, 35, 2, 3), 16), ((1, 9, 31, 1, 4), 12),
                                          ((1, 13, 11, 2, 2), 5)])
def test_local_attention_equals_its_direct_definition(shape, window):
  rng = np.random.default_rng(2)
  q, k, v = (rng.normal(size=shape) for _ in range(3))
  temperature = rng.uniform(0.5, 2.0, size=shape[3])
  got = tlc_attention.local_transposed_attention(
      *(jnp.asarray(t, jnp.float32) for t in (q, k, v, temperature)), window)
  np.testing.assert_allclose(np.asarray(got[0]),
                             _direct_local_attention(q, k, v, temperature, window),
                             rtol=0, atol=2e-5)


def test_local_attention_shifted_by_whole_cells_shifts_its_output():
  """Translation equivariance away from the border: the statistics are local."""
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 48, 48, 1, 4)), jnp.float32) for _ in range(3))
  run = lambda t: np.asarray(tlc_attention.local_transposed_attention(*t, jnp.ones(1), 16))
  whole = run((q, k, v))
  shifted = run(tuple(t[:, 6:, 4:] for t in (q, k, v)))  # Cells of 2 pixels.
  np.testing.assert_allclose(shifted[:, 10:-16, 10:-16], whole[:, 16:-16, 14:-16], atol=1e-5)


def _perturbed(params, seed=3):
  """Params plus noise (NAFNet's beta/gamma start at 0, which would hide the attention)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: x + jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype),
                      params)


@pytest.fixture(scope="module")
def fresh_restormer():
  """A micro Restormer and its initial parameters (its attention is global even untrained)."""
  model = registry.build_preset('restormer', "micro")
  return model, jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))["params"]


def test_nafnet_tlc_changes_no_parameter_and_nothing_up_to_the_window():
  trained, converted = (registry.build_preset('nafnet', "micro", tlc_window=w) for w in (0, 48))
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 40, 48, 3))
  assert (jax.eval_shape(converted.init, jax.random.PRNGKey(1), x)
          == jax.eval_shape(trained.init, jax.random.PRNGKey(1), x))
  params = _perturbed(jax.jit(trained.init)(jax.random.PRNGKey(1), x)["params"])
  run = lambda m: np.asarray(jax.jit(m.apply)({"params": params}, x))
  np.testing.assert_array_equal(run(converted), run(trained))
  local = trained.clone(tlc_window=16)  # Local at every level: the output changes.
  assert np.abs(run(local) - run(trained)).max() > 1e-4


def test_restormer_tlc_changes_no_parameter_and_nothing_up_to_the_window(fresh_restormer):
  trained, params = fresh_restormer
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 40, 48, 3))
  converted = trained.clone(tlc_window=48)
  assert (jax.eval_shape(converted.init, jax.random.PRNGKey(1), x)
          == jax.eval_shape(trained.init, jax.random.PRNGKey(1), x))
  run = lambda m: np.asarray(jax.jit(m.apply)({"params": params}, x))
  np.testing.assert_array_equal(run(converted), run(trained))


# ---------------------------------------------------------------------------------------------
# Tiles: a short dehazing run, which (unlike a micro denoiser) leans on its global statistics.

CROP, TILE, OVERLAP, STEPS = 32, 64, 8, 400


def _hazy_batches(rng, batch):
  photos = [sources.load_embedded(n) for n in sources.EMBEDDED_TRAIN]
  while True:
    clean, hazy = [], []
    for _ in range(batch):
      photo = photos[rng.integers(len(photos))]
      y, x = (rng.integers(s - CROP + 1) for s in photo.shape[:2])
      crop = photo[y:y + CROP, x:x + CROP]
      clean.append(crop)
      hazy.append(ops.apply_haze(crop, rng, beta=rng.uniform(0.5, 2.0),
                                 airlight=rng.uniform(0.7, 1.0)))
    yield np.stack(hazy), np.stack(clean)


@pytest.fixture(scope="module")
def dehazer():
  """A micro NAFNet trained STEPS steps (L1, Adam) to dehaze 32-pixel crops."""
  model = registry.build_preset('nafnet', "micro")
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, CROP, CROP, 3)))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, STEPS))

  @jax.jit
  def step(params, opt_state, hazy, clean):
    loss = lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, hazy) - clean))
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state, batches = tx.init(params), _hazy_batches(np.random.default_rng(0), 8)
  for _ in range(STEPS):
    params, opt_state = step(params, opt_state, *next(batches))
  return model, params


def _hazy_photo(size: int = 192):
  """A held-out photo hazed with depth growing towards the top (horizontal bands of haze)."""
  photo = Image.fromarray(np.uint8(sources.load_embedded("astronaut") * 255))
  clean = np.asarray(photo.resize((size, size), Image.BICUBIC), np.float32) / 255
  return ops.apply_haze(clean, np.random.default_rng(5), beta=1.5, airlight=0.9), clean


def _psnr(a, b):
  return 10 * np.log10(1 / np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))


def _restore(model, params, image, tile=0, context=0):
  apply = jax.jit(model.apply)
  fn = lambda x: apply({"params": params}, x)
  return tiling.tiled_apply(fn, image, tile=tile, overlap=OVERLAP, context=context,
                            multiple=model.size_multiple)


def test_tiles_join_without_seams_with_tlc_and_not_without(dehazer):
  model, params = dehazer
  hazy, clean = _hazy_photo()
  local = tlc_inference.plan(model, "auto", CROP, multiple=model.size_multiple)
  assert (local.window, local.context) == (48, 24)
  converted = tlc_inference.convert(model, local)
  whole = _restore(converted, params, hazy)
  tiled = _restore(converted, params, hazy, TILE, local.context)
  assert _psnr(tiled, whole) >= 40.0
  # Without TLC the same tiling shows the seams: each tile pools over itself.
  whole_global = _restore(model, params, hazy)
  assert _psnr(_restore(model, params, hazy, TILE), whole_global) < 35.0
  # And quality: TLC's tiles restore the photo at least as well as whole-image inference.
  assert _psnr(tiled, clean) >= _psnr(whole_global, clean) - 0.1
  assert _psnr(whole_global, clean) > _psnr(hazy, clean) + 3  # The model does dehaze.


def test_restormer_tiles_join_with_tlc(fresh_restormer):
  """Tiles of a fresh micro Restormer already disagree; with TLC and context they agree."""
  model, params = fresh_restormer
  hazy, _ = _hazy_photo(96)
  converted = model.clone(tlc_window=24)
  tiled = lambda m, context: _restore(m, params, hazy, 32, context)
  seamless = _psnr(tiled(converted, 16), _restore(converted, params, hazy))
  assert seamless >= 40.0
  assert _psnr(tiled(model, 0), _restore(model, params, hazy)) < seamless - 10


# ---------------------------------------------------------------------------------------------
# Tile context and progress.


def test_context_makes_a_local_operation_exact_across_tiles():
  """x * its 9x9 local mean has a receptive field of 4 pixels (plus the border shift): with
  that much context every tile sees what the whole image shows it."""
  op = lambda x: np.asarray(x * tlc.local_mean(x, 9))
  image = np.random.default_rng(4).random((50, 61, 3)).astype(np.float32)
  whole = op(image[None])[0]
  with_context = tiling.tiled_apply(op, image, tile=16, overlap=4, context=8)
  np.testing.assert_allclose(with_context, whole, rtol=0, atol=1e-5)
  without = tiling.tiled_apply(op, image, tile=16, overlap=4)
  assert np.abs(without - whole).max() > 1e-2


def test_context_keeps_one_tile_shape_and_checks_its_multiple():
  shapes = set()
  tiling.tiled_apply(lambda x: shapes.add(x.shape) or x, np.zeros((50, 33, 3), np.float32),
                     tile=16, overlap=4, context=8)
  assert shapes == {(1, 32, 32, 3)}
  with pytest.raises(ValueError, match="context must be a non-negative multiple of 4"):
    tiling.tiled_apply(lambda x: x, np.zeros((50, 33, 3), np.float32), tile=16, overlap=4,
                       multiple=4, context=6)


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_reports_every_tile_and_draws_a_bar_on_a_terminal():
  calls, image = [], np.zeros((100, 100, 3), np.float32)
  tiling.tiled_apply(lambda x: x, image, tile=24, overlap=4, progress=lambda *a: calls.append(a))
  total = len(tiling.tile_starts(100, 24, 4)) ** 2
  assert calls == [(i, total) for i in range(1, total + 1)]
  terminal = _Terminal()
  tiling.tiled_apply(lambda x: x, image, tile=24, overlap=4,
                     progress=tiling.TileProgress(min_tiles=4, stream=terminal))
  text = terminal.getvalue()
  assert text.count("\r") == total and text.count("\n") == 1
  assert f"] tiles {total}/{total}, " in text and text.endswith(", 0 s left\n")
  quiet = _Terminal()
  tiling.tiled_apply(lambda x: x, image, tile=24, overlap=4,
                     progress=tiling.TileProgress(min_tiles=total + 1, stream=quiet))
  assert quiet.getvalue() == ""


# ---------------------------------------------------------------------------------------------
# When TLC is used.


def test_recorded_train_size():
  assert tlc_inference.recorded_train_size({"train_size": 128}) == 128
  config = '{"data": {"crop_size": 256}}'
  assert tlc_inference.recorded_train_size(None, {"config": config}) == 256
  assert tlc_inference.recorded_train_size({"model": {}}, {}) == 0


def test_the_window_grows_with_the_image_beyond_the_training_images():
  assert tlc_inference.scaled_window(64) == 96  # 1.5 x the crop.
  assert tlc_inference.scaled_window(64, 128, 512) == 96  # Smaller than the training images.
  assert tlc_inference.scaled_window(64, 3200, 512) == 600  # 96 x 3200 / 512.
  assert tlc_inference.scaled_window(64, 3200, 0) == 96  # Unrecorded: 1.5 x the crop.
  naf = registry.build_preset('nafnet', "micro")
  local = tlc_inference.plan(naf, "auto", 64, multiple=16, image_side=3200, train_image_side=512)
  assert local == tlc_inference.LocalPlan(600, 304)


def test_plan_modes():
  naf = registry.build_preset('nafnet', "micro")
  assert tlc_inference.plan(naf, "auto", 256, multiple=16) == tlc_inference.LocalPlan(384, 192)
  assert tlc_inference.plan(naf, "on", 100, multiple=16) == tlc_inference.LocalPlan(150, 80)
  assert tlc_inference.plan(naf, "on", 256, context=0).context == 0
  assert tlc_inference.plan(naf, "off", 256).window == 0
  assert tlc_inference.plan(naf, "auto", 0).window == 0  # Unknown crop size: off, warned.
  with pytest.raises(ValueError, match="pass --train_size"):
    tlc_inference.plan(naf, "on", 0)
  sr = registry.build_preset('rrdbnet', next(iter(rrdbnet.PRESETS)))
  assert tlc_inference.plan(sr, "auto", 256).window == 0
  with pytest.raises(ValueError, match="applies to NAFNet and Restormer"):
    tlc_inference.plan(sr, "on", 256)
  with pytest.raises(ValueError, match="Unknown TLC mode 'yes'"):
    tlc_inference.plan(naf, "yes", 256)


def _arch():
  config = base_config().model
  config.preset = "micro"
  return registry.architecture(config)


def test_infer_uses_the_recorded_crop_size_and_tile_context(tmp_path):
  model = registry.build_preset('nafnet', "micro")
  init = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  params = _perturbed(init["params"])
  for name, meta in (("recorded", {"train_size": 16}), ("unrecorded", {})):
    exports.save_params(str(tmp_path / name), params, dict(meta, model=_arch()))
  image = np.random.default_rng(6).random((40, 52, 3))
  Image.fromarray(np.uint8(image * 255)).save(tmp_path / "in.png")
  image = sources.read_image(tmp_path / "in.png")

  def cli(name, **flags):
    infer.run(str(tmp_path / name), None, str(tmp_path / "in.png"), str(tmp_path / "out.png"),
              tile=16, overlap=4, overwrite=True, **flags)
    return np.asarray(Image.open(tmp_path / "out.png"))

  def expected(window, context):
    apply = jax.jit(model.clone(tlc_window=window).apply)
    out = tiling.tiled_apply(lambda x: apply({"params": params}, x), image, tile=16,
                             overlap=4, multiple=4, context=context)
    return np.asarray(metrics.to_uint8_grid(out)).astype(np.uint8)

  tlc_on = expected(24, 12)  # Window 1.5 x 16; context half of it.
  np.testing.assert_array_equal(cli("recorded"), tlc_on)
  global_stats = expected(0, 0)
  np.testing.assert_array_equal(cli("unrecorded"), global_stats)  # auto: no size, no TLC.
  assert not np.array_equal(tlc_on, global_stats)
  with pytest.raises(ValueError, match="pass --train_size"):
    cli("unrecorded", tlc="on")
  # Trained on 20-pixel images, the 40x52 input is twice as large: the window doubles (48,
  # context 24); --train_size sets the window by hand and keeps 1.5x the crop.
  exports.save_params(str(tmp_path / "scaled"), params,
                      {"train_size": 16, "train_image_side": 20, "model": _arch()})
  np.testing.assert_array_equal(cli("scaled"), expected(48, 24))
  np.testing.assert_array_equal(cli("scaled", train_size=16), tlc_on)
