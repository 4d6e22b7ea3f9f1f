"""TLC (test-time local converter): local statistics in NAFNet/Restormer, seamless tiles."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from sr_jax import checkpoint, infer, metrics, tiling, tlc_inference
from sr_jax.config_base import base_config
from sr_jax.data import ops, sources
from sr_jax.models import nafnet, registry, restormer, rrdbnet, tlc


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


@pytest.mark.parametrize("length,window", [(10, 4), (12, 4), (13, 5), (5, 9), (100, 96)])
def test_grid_windows_are_the_fewest_that_cover_evenly_spaced(length, window):
  starts = tlc.grid_starts(length, window)
  k = min(window, length)
  assert len(starts) == -(-length // k) and starts[0] == 0 and starts[-1] == length - k
  covered = np.zeros(length, bool)
  for s in starts:
    covered[s:s + k] = True
  assert covered.all()
  assert np.ptp(np.diff(starts)) <= 1 if len(starts) > 2 else True


def _numpy_attention(q, k, v, temperature):
  """MDTA's core on (H, W, heads, c) float64 arrays (one image)."""
  h, w, heads, c = q.shape
  q, k, v = (t.reshape(h * w, heads, c) for t in (q, k, v))
  q = q / np.maximum(np.linalg.norm(q, axis=0, keepdims=True), 1e-12)
  k = k / np.maximum(np.linalg.norm(k, axis=0, keepdims=True), 1e-12)
  logits = np.einsum("phc,phd->hcd", q, k) * temperature[:, None, None]
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  return np.einsum("hcd,phd->phc", attn, v).reshape(h, w, heads, c)


def test_local_channel_attention_averages_attention_over_grid_windows():
  rng = np.random.default_rng(2)
  q, k, v = (rng.normal(size=(1, 11, 14, 2, 3)) for _ in range(3))
  temperature = np.asarray([1.0, 2.5])
  attend = lambda *t: restormer.transposed_attention(*t, jnp.asarray(temperature, jnp.float32))
  window = 6
  got = tlc.local_channel_attention(attend, *(jnp.asarray(t, jnp.float32) for t in (q, k, v)),
                                    window)
  total, count = np.zeros((11, 14, 2, 3)), np.zeros((11, 14, 1, 1))
  for top in tlc.grid_starts(11, window):
    for left in tlc.grid_starts(14, window):
      part = (slice(top, top + window), slice(left, left + window))
      total[part] += _numpy_attention(q[0][part], k[0][part], v[0][part], temperature)
      count[part] += 1
  np.testing.assert_allclose(np.asarray(got[0]), total / count, rtol=0, atol=1e-5)
  whole = attend(*(jnp.asarray(t, jnp.float32) for t in (q, k, v)))
  covering = tlc.local_channel_attention(attend, *(jnp.asarray(t, jnp.float32)
                                                   for t in (q, k, v)), 14)
  np.testing.assert_array_equal(np.asarray(covering), np.asarray(whole))
  assert np.abs(np.asarray(got) - np.asarray(whole)).max() > 1e-3  # The windows matter.


def _perturbed(params, seed=3):
  """Params plus noise (NAFNet's beta/gamma start at 0, which would hide the attention)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: x + jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype),
                      params)


@pytest.mark.parametrize("build", [lambda **kw: nafnet.nafnet_from_preset("micro", **kw),
                                   lambda **kw: restormer.restormer_from_preset("micro", **kw)],
                         ids=["nafnet", "restormer"])
def test_tlc_changes_no_parameter_and_nothing_up_to_the_window(build):
  trained, converted = build(), build(tlc_window=48)
  x = jax.random.uniform(jax.random.PRNGKey(0), (1, 40, 48, 3))
  params = _perturbed(jax.jit(trained.init)(jax.random.PRNGKey(1), x)["params"])
  shapes = lambda m: jax.eval_shape(m.init, jax.random.PRNGKey(1), x)
  assert shapes(converted) == shapes(trained)
  run = lambda m: np.asarray(jax.jit(m.apply)({"params": params}, x))
  np.testing.assert_array_equal(run(converted), run(trained))
  small = build(tlc_window=16)  # Local at the first levels: the output changes.
  assert np.abs(run(small) - run(trained)).max() > 1e-4


# ---------------------------------------------------------------------------------------------
# Tiles: a short dehazing run, which (unlike a micro denoiser) leans on its global statistics.

CROP, TILE, OVERLAP = 32, 64, 8


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
  """A micro NAFNet trained 400 steps (L1, Adam) to dehaze 32-pixel crops."""
  model, steps = nafnet.nafnet_from_preset("micro"), 400
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, CROP, CROP, 3)))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(3e-3, steps))

  @jax.jit
  def step(params, opt_state, hazy, clean):
    loss = lambda p: jnp.mean(jnp.abs(model.apply({"params": p}, hazy) - clean))
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state, batches = tx.init(params), _hazy_batches(np.random.default_rng(0), 8)
  for _ in range(steps):
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
  assert _psnr(tiled, clean) >= _psnr(whole_global, clean) - 0.05
  assert _psnr(whole_global, clean) > _psnr(hazy, clean) + 3  # The model does dehaze.


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


def test_plan_modes():
  naf = nafnet.nafnet_from_preset("micro")
  assert tlc_inference.plan(naf, "auto", 256, multiple=16) == tlc_inference.LocalPlan(384, 192)
  assert tlc_inference.plan(naf, "on", 100, multiple=16) == tlc_inference.LocalPlan(150, 80)
  assert tlc_inference.plan(naf, "on", 256, context=0).context == 0
  assert tlc_inference.plan(naf, "off", 256).window == 0
  assert tlc_inference.plan(naf, "auto", 0).window == 0  # Unknown crop size: off, warned.
  with pytest.raises(ValueError, match="pass --train_size"):
    tlc_inference.plan(naf, "on", 0)
  sr = rrdbnet.rrdbnet_from_preset(next(iter(rrdbnet.PRESETS)))
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
  model = nafnet.nafnet_from_preset("micro")
  init = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
  params = _perturbed(init["params"])
  for name, meta in (("recorded", {"train_size": 16}), ("unrecorded", {})):
    checkpoint.save_params(str(tmp_path / name), params, dict(meta, model=_arch()))
  image = np.random.default_rng(6).random((40, 52, 3))
  Image.fromarray(np.uint8(image * 255)).save(tmp_path / "in.png")
  image = sources.read_image(tmp_path / "in.png")

  def cli(name, **flags):
    infer.run(str(tmp_path / name), None, str(tmp_path / "in.png"), str(tmp_path / "out.png"),
              tile=16, overlap=4, **flags)
    return np.asarray(Image.open(tmp_path / "out.png"))

  def expected(window, context):
    m = model.clone(tlc_window=window)
    out = tiling.tiled_apply(lambda x: m.apply({"params": params}, x), image, tile=16,
                             overlap=4, multiple=4, context=context)
    return np.asarray(metrics.to_uint8_grid(out)).astype(np.uint8)

  tlc_on = expected(24, 12)  # Window 1.5 x 16; context half of it.
  np.testing.assert_array_equal(cli("recorded"), tlc_on)
  np.testing.assert_array_equal(cli("unrecorded", train_size=16), tlc_on)
  global_stats = expected(0, 0)
  np.testing.assert_array_equal(cli("recorded", tlc="off"), global_stats)
  np.testing.assert_array_equal(cli("unrecorded"), global_stats)
  assert not np.array_equal(tlc_on, global_stats)
  with pytest.raises(ValueError, match="pass --train_size"):
    cli("unrecorded", tlc="on")
