"""The adapter bank: a mixed batch equals each image restored alone with its adapter merged
(NAFNet and Restormer; adapters of different ranks, scalings and tuned leaves), a new mix does
not recompile, and an adapter that does not fit is refused at load naming it."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax.adapt import adapter_bank, adapters, lora
from sr_jax.models import registry
from sr_jax.util import exports, trees


def _adapter(base, arch, name, *, seed, rank, scaling="standard", overrides=(), tune=()):
  """A trained-looking adapter: random A and B (B is zero at init), some biases moved."""
  exclude = (registry.entry(arch["name"]).depthwise_kernels,)
  plan = lora.make_plan(base, targets=[r".*/kernel"], rank=rank, alpha=2.0 * rank,
                        exclude=exclude, rank_overrides=overrides, scaling=scaling)
  rng = jax.random.PRNGKey(seed)
  factors = trees.flatten(lora.init_adapters(rng, base, plan))
  for i, path in enumerate(sorted(factors)):
    if path.endswith("/b"):
      factors[path] = 0.05 * jax.random.normal(jax.random.fold_in(rng, 100 + i),
                                               factors[path].shape)
  flat = trees.flatten(base)
  tuned = {p: flat[p] + 0.1 * (i + 1) for i, p in enumerate(tune)}
  return adapters.Adapter(trees.unflatten(factors), trees.unflatten(tuned), plan,
                          {"model": arch, "lora_plan": plan.to_json()}, name)


def _setup(name, preset, size):
  model = registry.build_preset(name, preset)
  base = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]
  arch = registry.module_architecture(name, model)
  biases = [p for p in trees.flatten(base) if p.endswith("bias")]
  named = [("haze", _adapter(base, arch, "haze", seed=1, rank=2, tune=biases[:3])),
           ("rain", _adapter(base, arch, "rain", seed=2, rank=4,
                             overrides=(r".*(ending|output).*=1",))),
           ("noise", _adapter(base, arch, "noise", seed=3, rank=3, scaling="rank_stabilized",
                              tune=biases[2:5]))]
  return model, base, arch, named


@pytest.mark.parametrize("cin,cout,size,stride,padding", [
    (3, 16, 3, 1, "SAME"), (16, 3, 3, 1, "SAME"), (8, 4, 3, 1, [(1, 1), (1, 1)]),
    (8, 16, 2, 2, "VALID"), (6, 4, 3, 2, [(1, 1), (1, 1)]), (5, 2, 4, 1, "SAME"),
    (6, 4, 3, 2, "SAME")])
def test_matmul_conv_equals_xla_convolution(cin, cout, size, stride, padding):
  """Both intermediates (patches; per-tap products, taken when cout < cin at stride 1) give
  lax's convolution, including an even kernel's asymmetric 'SAME' padding and a strided
  'SAME' (whose padding depends on the input size)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 10, cin))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (size, size, cin, cout))
  expected = jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  got = adapter_bank.matmul_conv(x, kernel, (stride, stride), padding)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name,preset,size", [("nafnet", "micro", 16), ("restormer", "micro", 16)])
def test_a_mixed_batch_equals_each_image_through_its_merged_adapter(name, preset, size):
  model, base, _, named = _setup(name, preset, size)
  bank = adapter_bank.build(model, base, named)
  assert bank.rank == 4 and bank.a[bank.plan.paths[0]].shape[0] == 3
  images = jax.random.uniform(jax.random.PRNGKey(9), (4, size, size, 3))
  index = jnp.asarray([2, 0, 1, 2])
  mixed = jax.jit(bank.apply)(bank.arrays(), images, index)
  for row, which in enumerate(np.asarray(index)):
    merged = adapters.apply_adapter(base, named[which][1])
    alone = model.apply({"params": merged}, images[row:row + 1])[0]
    np.testing.assert_allclose(np.asarray(mixed[row]), np.asarray(alone), rtol=1e-4, atol=2e-5,
                               err_msg=f"row {row}, adapter {named[which][0]}")
  # The adapters differ, so the check above is not one adapter's output thrice.
  plain = model.apply({"params": base}, images[:1])[0]
  assert not np.allclose(np.asarray(mixed[0]), np.asarray(plain), atol=1e-4)


def test_a_new_mix_does_not_recompile():
  model, base, _, named = _setup("nafnet", "micro", 16)
  bank = adapter_bank.build(model, base, named)
  run = jax.jit(bank.apply)
  images = jnp.ones((4, 16, 16, 3)) * 0.5
  first = run(bank.arrays(), images, jnp.asarray([0, 1, 2, 0]))
  second = run(bank.arrays(), images, jnp.asarray([2, 2, 2, 1]))
  assert run._cache_size() == 1  # pylint: disable=protected-access
  assert not np.allclose(np.asarray(first[0]), np.asarray(second[0]))


def test_loading_refuses_an_adapter_that_does_not_fit_naming_it(tmp_path):
  model, base, arch, named = _setup("nafnet", "micro", 16)
  exports.save_params(str(tmp_path / "base"), base, {"model": arch})
  for name, adapter in named[:2]:
    exports.save_adapters(str(tmp_path / name), adapter.lora, adapter.tuned_base,
                          dict(adapter.meta, train_size=16))
  bank = adapter_bank.load(str(tmp_path / "base"), {n: str(tmp_path / n) for n, _ in named[:2]})
  assert bank.names == ("haze", "rain") and bank.index("rain") == 1
  other = registry.build_preset("restormer", "micro")
  other_base = jax.jit(other.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  wrong = _adapter(other_base, registry.module_architecture("restormer", other), "wrong",
                   seed=4, rank=2)
  exports.save_adapters(str(tmp_path / "wrong"), wrong.lora, wrong.tuned_base, wrong.meta)
  with pytest.raises(ValueError, match=r"Adapter 'low_light' \(.*wrong\) does not fit"):
    adapter_bank.load(str(tmp_path / "base"), {"haze": str(tmp_path / "haze"),
                                               "low_light": str(tmp_path / "wrong")})
  with pytest.raises(ValueError, match="holds haze, rain"):
    bank.index("snow")


def _saved(tmp_path, named, base, arch):
  exports.save_params(str(tmp_path / "base"), base, {"model": arch, "train_size": 16})
  dirs = {}
  for name, adapter in named:
    exports.save_adapters(str(tmp_path / name), adapter.lora, adapter.tuned_base,
                          dict(adapter.meta, train_size=16))
    dirs[name] = str(tmp_path / name)
  return str(tmp_path / "base"), dirs


def _merged_png(model, base, adapter, image):
  from sr_jax.quality import metrics  # pylint: disable=g-import-not-at-top
  out = model.apply({"params": adapters.apply_adapter(base, adapter)}, jnp.asarray(image)[None])
  return np.asarray(metrics.to_uint8_grid(out[0])).astype(np.int32)


def test_infer_routes_images_by_folder_and_csv_through_one_bank(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sr_jax.inference import bank_infer  # pylint: disable=g-import-not-at-top
  from sr_jax.util import errors
  from sr_jax.data import sources  # pylint: disable=g-import-not-at-top
  model, base, arch, named = _setup("nafnet", "micro", 16)
  base_dir, dirs = _saved(tmp_path, named, base, arch)
  rng = np.random.default_rng(0)
  inputs = tmp_path / "in"
  for name, count in (("haze", 2), ("noise", 1), ("rain", 1)):
    (inputs / name).mkdir(parents=True)
    for i in range(count):  # Two sizes: batches group equal sizes across adapters.
      size = (16, 24) if i else (16, 16)
      Image.fromarray(rng.integers(0, 256, (*size, 3), np.uint8)).save(
          inputs / name / f"{name}{i}.png")
  rows = bank_infer.run(base_dir, dirs, str(inputs), str(tmp_path / "out"), batch=4, tlc="off")
  assert len(rows) == 4
  by_name = dict(named)
  for row in rows:
    got = np.asarray(Image.open(row["output"])).astype(np.int32)
    image = sources.read_image(row["input"])
    want = _merged_png(model, base, by_name[row["adapter"]], image)
    assert np.abs(got - want).max() <= 1, row
    assert pathlib.Path(row["output"]).parent.name == row["adapter"]
  # A CSV routes a flat folder; the same image through another adapter differs.
  flat = tmp_path / "flat"
  flat.mkdir()
  Image.open(inputs / "haze" / "haze0.png").save(flat / "a.png")
  Image.open(inputs / "haze" / "haze0.png").save(flat / "b.png")
  (tmp_path / "routes.csv").write_text("file,adapter\na.png,haze\nb.png,rain\n")
  rows = bank_infer.run(base_dir, dirs, str(flat), str(tmp_path / "out_csv"), tlc="off",
                        route=str(tmp_path / "routes.csv"))
  a, b = (np.asarray(Image.open(tmp_path / "out_csv" / f"{n}.png")) for n in "ab")
  assert not np.array_equal(a, b)
  # Routing errors name what is wrong before any model is read.
  (inputs / "snow").mkdir()
  with pytest.raises(errors.UsageError, match="Sub-folder .*snow names no adapter"):
    bank_infer.run(base_dir, dirs, str(inputs), str(tmp_path / "o2"), tlc="off")
  with pytest.raises(errors.UsageError, match="every --adapter as NAME=DIR"):
    bank_infer.named_adapters(["haze=x", "plain_dir"])


def test_bank_tiles_with_tlc_join_far_closer_than_without(tmp_path):
  from sr_jax.inference import bank_infer  # pylint: disable=g-import-not-at-top
  model, base, _, named = _setup("nafnet", "micro", 16)
  leaves, tree = jax.tree.flatten(base)  # Initial channel attention is nearly inert: stir it.
  keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
  base = jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])
  bank = adapter_bank.build(model, base, named)
  tiled = bank_infer.BankRestorer(bank, tile=16, overlap=4, multiple=4)
  image = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (32, 40, 3)))
  whole = tiled.restore(image[None], ["rain"])[0]
  rms = lambda x, y: float(np.sqrt(np.mean(np.square(x - y))))
  seams = rms(tiled.tiled(image, "rain"), whole)  # Each tile pools over itself: seams.
  # With TLC and context, the bank's tiles agree with its whole-image output (to what TLC's
  # deeper levels' windows allow) far better than without.
  local_bank, local = bank_infer.with_tlc(bank, "on", 8, -1, 4)
  local_tiles = bank_infer.BankRestorer(local_bank, tile=16, overlap=4, context=local.context,
                                        multiple=4).tiled(image, "rain")
  local_whole = bank_infer.BankRestorer(local_bank).restore(image[None], ["rain"])[0]
  assert rms(local_tiles, local_whole) < seams / 10, (rms(local_tiles, local_whole), seams)
  assert rms(local_whole, whole) > 1e-3  # TLC changed the statistics.


def test_the_benchmark_rows_time_both_and_check_every_mixed_row():
  from sr_jax.tools import bank_benchmark  # pylint: disable=g-import-not-at-top
  model, base, _, named = _setup("nafnet", "micro", 16)
  bank = adapter_bank.build(model, base, named)
  rows = [bank_benchmark.measure(bank, named, count, 4, 16, repeats=1) for count in (1, 4)]
  for row in rows:
    assert row["bank_ms"] > 0 and row["one_ms"] > 0 and row["bank_mib"] > 0
    assert row["worst"] < 1e-4  # Every mixed row equals its adapter merged and run alone.
  text = bank_benchmark.table(rows)
  assert text.count("\n") == 3 and "| 4 | 4 |" in text
