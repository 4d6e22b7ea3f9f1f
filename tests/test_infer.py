"""Deployment: adapters saved and applied on a loaded base, tiled inference, the infer CLI."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from PIL import Image

from sr_jax import infer
from sr_jax.adapt import adapters, lora
from sr_jax.config.config_base import base_config
from sr_jax.inference import tiling
from sr_jax.models import registry
from sr_jax.objectives import pixel
from sr_jax.quality import metrics
from sr_jax.util import exports, trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTED = ("intro/kernel", "encoders_0_0/conv1/kernel", "ending/kernel")
TUNED = ("encoders_0_0/beta", "ending/bias")


def _model_config():
  c = base_config().model
  c.preset = "micro"
  return c


def _perturbed_base(model) -> dict:
  """Initialised micro NAFNet params plus noise: beta/gamma start at 0, which would make every
  block (and every adapter inside one) a no-op."""
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda x: x + jnp.asarray(0.1 * rng.normal(size=x.shape), x.dtype), params)


def _make_adapter(base, seed: int, rank: int = 2):
  """(lora tree, tuned base leaves, plan) built by hand: random nonzero A and B."""
  flat, rng = trees.flatten(base), np.random.default_rng(seed)
  factors = {}
  for path in ADAPTED:
    fan_in, fan_out = math.prod(flat[path].shape[:-1]), flat[path].shape[-1]
    factors[f"{path}/a"] = jnp.asarray(rng.normal(size=(fan_in, rank)), jnp.float32)
    factors[f"{path}/b"] = jnp.asarray(0.1 * rng.normal(size=(rank, fan_out)), jnp.float32)
  tuned = {p: flat[p] + jnp.asarray(rng.normal(size=flat[p].shape), jnp.float32) for p in TUNED}
  plan = lora.LoraPlan(tuple((p, rank) for p in sorted(ADAPTED)),
                       tuple((p, 2.0 * rank) for p in sorted(ADAPTED)))
  return trees.unflatten(factors), trees.unflatten(tuned), plan


def _in_memory_merge(base, factors, tuned, plan):
  flat = trees.flatten(base)
  flat.update(trees.flatten(tuned))
  return lora.merge(trees.unflatten(flat), factors, plan)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A saved micro NAFNet base and two saved adapters (A, B) on it, plus in-memory copies."""
  root = tmp_path_factory.mktemp("deploy")
  model_config = _model_config()
  model, arch = registry.build_model(model_config), registry.architecture(model_config)
  base = _perturbed_base(model)
  exports.save_params(str(root / "base"), base, {"model": arch})
  made = {}
  for name, seed in (("a", 10), ("b", 20)):
    factors, tuned, plan = _make_adapter(base, seed)
    exports.save_adapters(str(root / name), factors, tuned,
                          {"model": arch, "lora_plan": plan.to_json(), "step": 1})
    made[name] = (factors, tuned, plan)
  image = jax.random.uniform(jax.random.PRNGKey(2), (1, 20, 24, 3))
  return dict(root=root, model=model, arch=arch, base=base, made=made, image=image,
              apply=jax.jit(model.apply))


def _run(setup, params) -> np.ndarray:
  return np.asarray(setup["apply"]({"params": params}, setup["image"]))


def test_exported_adapter_reproduces_the_in_memory_merge_bit_for_bit(setup):
  base, meta = adapters.load_base(setup["root"] / "base")
  adapter = adapters.load_adapter(setup["root"] / "a")
  adapters.check_compatible(meta, adapter, base)
  adapters.check_compatible(meta, adapter)  # Shapes from the recorded architecture alone.
  loaded = adapters.apply_adapter(base, adapter)
  expected = _in_memory_merge(setup["base"], *setup["made"]["a"])
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  out = _run(setup, loaded)
  np.testing.assert_array_equal(out, _run(setup, expected))
  assert not np.array_equal(out, _run(setup, base))  # The adapter changes the output.


def test_merged_equals_unmerged(setup):
  """The merged plain tree gives what training's objective computes from {'base', 'lora'}."""
  factors, tuned, plan = setup["made"]["a"]
  flat = trees.flatten(setup["base"])
  flat.update(trees.flatten(tuned))
  objective = pixel.PixelObjective(setup["model"], None, plan, "l1")
  unmerged = jax.jit(objective.apply)({"base": trees.unflatten(flat), "lora": factors},
                                      setup["image"])
  merged = _run(setup, adapters.apply_adapter(setup["base"], adapters.Adapter(
      factors, tuned, plan, {"model": setup["arch"]})))
  # Bit-identical on CPU; a tolerance leaves XLA free to fuse the in-jit merge differently.
  np.testing.assert_allclose(merged, np.asarray(unmerged), rtol=0, atol=1e-6)


def test_switching_adapters_on_one_loaded_base(setup):
  base, _ = adapters.load_base(setup["root"] / "base")
  before = {p: np.array(v) for p, v in trees.flatten(base).items()}
  a, b = (adapters.load_adapter(setup["root"] / n) for n in "ab")
  out_a = _run(setup, adapters.apply_adapter(base, a))
  out_b = _run(setup, adapters.apply_adapter(base, b))
  out_a_again = _run(setup, adapters.apply_adapter(base, a))
  np.testing.assert_array_equal(out_a, out_a_again)
  assert np.abs(out_a - out_b).max() > 1e-3
  after = trees.flatten(base)
  assert set(after) == set(before)
  for path, value in before.items():
    np.testing.assert_array_equal(np.asarray(after[path]), value, err_msg=path)


def test_adapter_of_another_architecture_is_refused_naming_the_field(setup):
  factors, tuned, plan = setup["made"]["a"]
  other = dict(setup["arch"], width=12)
  adapter = adapters.Adapter(factors, tuned, plan, {"model": other}, "/adapters/w12")
  with pytest.raises(ValueError, match=r"/adapters/w12 was trained for another architecture"
                                       r"(.|\n)*width: adapter has 12, base has 8"):
    adapters.check_compatible({"model": setup["arch"]}, adapter, setup["base"])


def test_adapter_with_a_wrong_kernel_shape_names_path_and_shapes(setup):
  factors, tuned, plan = setup["made"]["a"]
  flat = trees.flatten(factors)
  flat["intro/kernel/a"] = jnp.zeros((26, 2))
  bad_plan = lora.LoraPlan(plan.ranks + (("nope/kernel", 2),),
                           plan.alphas + (("nope/kernel", 4.0),))
  adapter = adapters.Adapter(trees.unflatten(flat), tuned, bad_plan, {"model": setup["arch"]})
  expected = (r"intro/kernel/a: expected shape \(27, 2\) \(base kernel \(3, 3, 3, 8\), rank 2\), "
              r"adapter has \(26, 2\)(.|\n)*nope/kernel: adapted kernel does not exist")
  for base_params in (setup["base"], None):  # Actual params, or the architecture's shapes.
    with pytest.raises(ValueError, match=expected):
      adapters.check_compatible({"model": setup["arch"]}, adapter, base_params)
  with pytest.raises(ValueError, match=expected):
    adapters.apply_adapter(setup["base"], adapter)
  wrong_tuned = adapters.Adapter(factors, {"ending": {"bias": jnp.zeros(4)}}, plan, {})
  with pytest.raises(ValueError, match=r"ending/bias: tuned base leaf has shape \(4,\), base has "
                                       r"\(3,\)"):
    adapters.apply_adapter(setup["base"], wrong_tuned)


def test_base_and_adapter_directories_are_not_interchangeable(setup, tmp_path):
  with pytest.raises(ValueError, match=r"/a holds LoRA adapters, not a full parameter tree"):
    adapters.load_base(setup["root"] / "a")
  with pytest.raises(ValueError, match=r"holds parameters, not adapters"):
    adapters.load_adapter(setup["root"] / "base")
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/missing does not exist"):
    adapters.load_base(tmp_path / "missing")


def test_model_from_architecture_rebuilds_the_recorded_model(setup):
  model = adapters.model_from_architecture(setup["arch"])
  assert model == setup["model"]
  with pytest.raises(ValueError, match=r"lacks \['width'\]"):
    adapters.model_from_architecture({k: v for k, v in setup["arch"].items() if k != "width"})


# ----------------------------------------------------------------------------------------------
# Tiling.


def _conv_stack(layers: int = 3, channels: int = 3, seed: int = 0):
  """A purely local model: `layers` 3x3 'SAME' convs with tanh, receptive radius `layers`.

  Tiled output must equal whole-image output away from tile borders. (NAFNet cannot serve here:
  its channel attention averages over the whole input, so no receptive field is finite.)
  """
  rng = np.random.default_rng(seed)
  kernels = [jnp.asarray(rng.normal(size=(3, 3, channels, channels)) / 4, jnp.float32)
             for _ in range(layers)]

  @jax.jit
  def fn(x):
    for k in kernels:
      x = jnp.tanh(lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return x
  return fn


def _exact_mask(length: int, tile: int, overlap: int, margin: int, scale: int = 1):
  """(pixels at least `margin` from every tile's inner borders, pixels in two or more tiles)."""
  bad, count = np.zeros(length * scale, bool), np.zeros(length * scale, int)
  for s in tiling.tile_starts(length, tile, overlap):
    t = min(tile, length)
    count[s * scale:(s + t) * scale] += 1
    if s > 0:
      bad[s * scale:(s + margin) * scale] = True
    if s + t < length:
      bad[(s + t - margin) * scale:(s + t) * scale] = True
  return ~bad, count > 1


def _upsample(x, factor: int = 2):
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


@pytest.mark.parametrize("scale", [1, 2])
def test_tiled_equals_whole_away_from_tile_borders_for_a_local_model(scale):
  conv = _conv_stack()
  fn = conv if scale == 1 else (lambda x: _upsample(conv(x), scale))
  image = np.random.default_rng(0).uniform(size=(50, 61, 3)).astype(np.float32)
  tile, overlap, margin = 24, 10, 3
  tiled = tiling.tiled_apply(fn, image, tile=tile, overlap=overlap, scale=scale, multiple=4)
  whole = np.asarray(fn(image[None]))[0]
  assert tiled.shape == whole.shape == (50 * scale, 61 * scale, 3) and tiled.dtype == np.float32
  good_y, shared_y = _exact_mask(50, tile, overlap, margin, scale)
  good_x, shared_x = _exact_mask(61, tile, overlap, margin, scale)
  good = good_y[:, None] & good_x[None, :]
  assert (good & (shared_y[:, None] | shared_x[None, :])).sum() > 100  # Blended pixels tested.
  np.testing.assert_allclose(tiled[good], whole[good], rtol=0, atol=1e-5)
  assert np.abs(tiled - whole)[~good].max() > 1e-4  # Tile borders do differ: the mask matters.


@pytest.mark.parametrize("shape,tile,overlap", [((37, 53, 3), 16, 5), ((40, 40, 1), 8, 3),
                                                ((9, 70, 2), 12, 0), ((10, 10, 3), 32, 4)])
def test_identity_and_constant_images_survive_blending(shape, tile, overlap):
  image = np.random.default_rng(1).uniform(size=shape).astype(np.float32)
  out = tiling.tiled_apply(lambda x: x, image, tile=tile, overlap=overlap)
  np.testing.assert_allclose(out, image, rtol=0, atol=1e-6)
  constant = np.full(shape, 0.37, np.float32)  # Weights sum to what they are normalised by.
  out = tiling.tiled_apply(lambda x: x, constant, tile=tile, overlap=overlap)
  np.testing.assert_allclose(out, constant, rtol=0, atol=1e-6)


def test_nearest_upsampling_with_scale_two_and_no_tiling():
  image = np.random.default_rng(2).uniform(size=(30, 45, 3)).astype(np.float32)
  expected = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
  out = tiling.tiled_apply(lambda x: _upsample(x, 2), image, tile=12, overlap=4, scale=2)
  assert out.shape == (60, 90, 3)
  np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
  calls = []
  whole = tiling.tiled_apply(lambda x: calls.append(x.shape) or x, image, tile=0, overlap=99)
  assert calls == [(1, 30, 45, 3)]
  np.testing.assert_array_equal(whole, image)


def test_tiles_share_one_shape_so_the_model_compiles_once():
  shapes = set()
  tiling.tiled_apply(lambda x: shapes.add(x.shape) or x, np.zeros((50, 33, 3), np.float32),
                     tile=16, overlap=4)
  assert shapes == {(1, 16, 16, 3)}


def test_bad_tiling_arguments_are_explained():
  image = np.zeros((20, 20, 3), np.float32)
  identity = lambda x: x
  with pytest.raises(ValueError, match=r"Tile size 10 is not a multiple of 4.*use e.g. 8 or 12"):
    tiling.tiled_apply(identity, image, tile=10, overlap=2, multiple=4)
  with pytest.raises(ValueError, match=r"less than half the tile size.*overlap=8 for tile=16"):
    tiling.tiled_apply(identity, image, tile=16, overlap=8)
  with pytest.raises(ValueError, match=r"overlap=-1"):
    tiling.tiled_apply(identity, image, tile=16, overlap=-1)
  with pytest.raises(ValueError, match=r"HWC image"):
    tiling.tiled_apply(identity, image[..., 0], tile=16, overlap=2)
  with pytest.raises(ValueError, match=r"expected \(1, 32, 32, C\) for scale=2"):
    tiling.tiled_apply(identity, image, tile=16, overlap=2, scale=2)


# ----------------------------------------------------------------------------------------------
# restore_images and the command line.


def _write_pngs(folder, sizes):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(3)
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
  return sorted(folder.iterdir())


def test_restore_images_writes_pngs_rounded_like_the_metrics(setup, tmp_path):
  paths = _write_pngs(tmp_path / "in", [(20, 28), (17, 23)])
  report = infer.restore_images(setup["base"], setup["model"], paths, tmp_path / "out")
  assert [r["tiles"] for r in report] == [1, 1]
  for path in paths:
    image = np.asarray(Image.open(path), np.float32) / 255.0
    written = np.asarray(Image.open(tmp_path / "out" / path.name))
    expected = metrics.to_uint8_grid(setup["apply"]({"params": setup["base"]}, image[None])[0])
    np.testing.assert_array_equal(written, np.asarray(expected).astype(np.uint8))
  report = infer.restore_images(setup["base"], setup["model"], paths, tmp_path / "tiled",
                                tile=16, overlap=4)
  assert [r["tiles"] for r in report] == [4, 4]
  assert Image.open(tmp_path / "tiled" / "im1.png").size == (23, 17)


def test_unreadable_images_and_bad_outputs_are_named(setup, tmp_path):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
  pairs = infer.plan_outputs(str(tmp_path / "in"), str(tmp_path / "out"))
  restorer = infer.Restorer(setup["model"], setup["base"])
  with pytest.raises(ValueError, match=r"Cannot read image file .*in/broken.png"):
    infer.restore_files(restorer, pairs)
  with pytest.raises(infer.UsageError, match=r"is a file; a folder --input needs a folder"):
    infer.plan_outputs(str(tmp_path / "in"), str(tmp_path / "in" / "broken.png"))
  with pytest.raises(infer.UsageError, match=r"must be a \.png file"):
    infer.plan_outputs(str(tmp_path / "in" / "broken.png"), str(tmp_path / "x.jpg"))
  with pytest.raises(ValueError, match=r"not a multiple of 4"):
    infer.Restorer(setup["model"], setup["base"], tile=18, overlap=2)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "sr_jax.infer", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=120, env=env)


def test_cli_folder_with_adapter_and_tiles(setup, tmp_path):
  _write_pngs(tmp_path / "in", [(20, 40), (33, 18)])
  proc = _cli("--checkpoint", setup["root"] / "base", "--adapter", setup["root"] / "a",
              "--input", tmp_path / "in", "--output", tmp_path / "out", "--tile", 16,
              "--overlap", 4)
  assert proc.returncode == 0, proc.stderr
  assert sorted(os.listdir(tmp_path / "out")) == ["im0.png", "im1.png"]
  assert Image.open(tmp_path / "out" / "im0.png").size == (40, 20)
  assert Image.open(tmp_path / "out" / "im1.png").size == (18, 33)
  assert "[2/2] im1.png: 18x33 -> 18x33 (WxH), 6 tile(s)" in proc.stderr


def test_cli_single_file_without_tiling_and_missing_checkpoint(setup, tmp_path):
  (path,) = _write_pngs(tmp_path / "in", [(21, 26)])
  proc = _cli("--checkpoint", setup["root"] / "base", "--input", path,
              "--output", tmp_path / "out" / "restored.png")
  assert proc.returncode == 0, proc.stderr
  assert Image.open(tmp_path / "out" / "restored.png").size == (26, 21)
  proc = _cli("--checkpoint", tmp_path / "no_such_dir", "--input", path,
              "--output", tmp_path / "x.png")
  assert proc.returncode == 2
  assert f"{tmp_path}/no_such_dir does not exist" in proc.stderr


def test_grayscale_restormer_gets_luma_and_writes_gray_pngs(tmp_path):
  # A 1-channel model (Restormer 'gaussian_gray' layout, micro widths) restores RGB files from
  # their ITU-R 601 luma and writes 'L' PNGs; a 6-channel (dual-pixel) model is refused up front.
  model = registry.entry("restormer").build("micro", inp_channels=1, out_channels=1)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))["params"]
  paths = _write_pngs(tmp_path / "in", [(21, 27)])
  infer.restore_images(params, model, paths, tmp_path / "out")
  written = Image.open(tmp_path / "out" / "im0.png")
  assert written.mode == "L" and written.size == (27, 21)
  luma = np.asarray(Image.open(paths[0]).convert("L"), np.float32) / 255.0
  rgb = np.asarray(Image.open(paths[0]), np.float32) / 255.0
  ours = rgb @ np.asarray([0.299, 0.587, 0.114], np.float32)
  assert np.abs(ours - luma).max() <= 1 / 255 + 1e-6  # The same luma Pillow computes.
  expected = model.apply({"params": params}, ours[None, ..., None])[0, ..., 0]
  np.testing.assert_array_equal(np.asarray(written),
                                np.asarray(metrics.to_uint8_grid(expected)).astype(np.uint8))
  dual = registry.entry("restormer").build("micro", inp_channels=6, dual_pixel_task=True)
  dual_params = jax.eval_shape(dual.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 6)))
  with pytest.raises(ValueError, match="6-channel inputs"):
    infer.Restorer(dual, dual_params["params"])


def test_cli_keeps_going_past_a_bad_image_and_exits_1_naming_it(setup, tmp_path):
  _write_pngs(tmp_path / "in", [(20, 24), (18, 22)])
  (tmp_path / "in" / "im_broken.png").write_bytes(b"not a png")
  proc = _cli("--checkpoint", setup["root"] / "base", "--input", tmp_path / "in",
              "--output", tmp_path / "out")
  assert proc.returncode == 1, proc.stderr
  assert sorted(os.listdir(tmp_path / "out")) == ["im0.png", "im1.png"]  # Every good one.
  assert "1 of 3 image(s) could not be restored" in proc.stderr
  assert f"{tmp_path / 'in' / 'im_broken.png'}: Cannot read image file" in proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_replaces_outputs_only_with_overwrite(setup, tmp_path):
  _write_pngs(tmp_path / "in", [(20, 24)])
  args = ("--checkpoint", setup["root"] / "base", "--input", tmp_path / "in",
          "--output", tmp_path / "out")
  assert _cli(*args).returncode == 0
  proc = _cli(*args)
  assert proc.returncode == 2
  assert "1 output(s) already exist" in proc.stderr and "--overwrite" in proc.stderr
  assert _cli(*args, "--overwrite").returncode == 0


def test_an_unwritable_output_is_refused_before_the_model_is_read(tmp_path):
  (path,) = _write_pngs(tmp_path / "in", [(20, 24)])
  (tmp_path / "a_file").write_text("x")
  # The checkpoint does not exist either: the output is checked first, in one line.
  proc = _cli("--checkpoint", tmp_path / "no_such_dir", "--input", tmp_path / "in",
              "--output", tmp_path / "a_file" / "out")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith(
      f"error: Cannot write to --output {tmp_path / 'a_file' / 'out'}")
  with pytest.raises(infer.UsageError, match="Cannot write to --output"):
    infer.plan_outputs(str(path), str(tmp_path / "a_file" / "x.png"))
