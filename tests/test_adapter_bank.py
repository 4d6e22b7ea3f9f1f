"""The adapter bank: a mixed batch equals each image restored alone with its adapter merged
(NAFNet and Restormer; adapters of different ranks, scalings and tuned leaves), a new mix does
not recompile, and an adapter that does not fit is refused at load naming it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax import adapter_bank, adapters, checkpoint, lora
from sr_jax.models import registry


def _adapter(base, arch, name, *, seed, rank, scaling="standard", overrides=(), tune=()):
  """A trained-looking adapter: random A and B (B is zero at init), some biases moved."""
  exclude = (registry.entry(arch["name"]).depthwise_kernels,)
  plan = lora.make_plan(base, targets=[r".*/kernel"], rank=rank, alpha=2.0 * rank,
                        exclude=exclude, rank_overrides=overrides, scaling=scaling)
  rng = jax.random.PRNGKey(seed)
  factors = lora.flatten(lora.init_adapters(rng, base, plan))
  for i, path in enumerate(sorted(factors)):
    if path.endswith("/b"):
      factors[path] = 0.05 * jax.random.normal(jax.random.fold_in(rng, 100 + i),
                                               factors[path].shape)
  flat = lora.flatten(base)
  tuned = {p: flat[p] + 0.1 * (i + 1) for i, p in enumerate(tune)}
  return adapters.Adapter(lora.unflatten(factors), lora.unflatten(tuned), plan,
                          {"model": arch, "lora_plan": plan.to_json()}, name)


def _setup(name, preset, size):
  model = registry.build_preset(name, preset)
  base = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))["params"]
  arch = registry.module_architecture(name, model)
  biases = [p for p in lora.flatten(base) if p.endswith("bias")]
  named = [("haze", _adapter(base, arch, "haze", seed=1, rank=2, tune=biases[:3])),
           ("rain", _adapter(base, arch, "rain", seed=2, rank=4, overrides=(r".*(ending|output).*=1",))),
           ("noise", _adapter(base, arch, "noise", seed=3, rank=3, scaling="rank_stabilized",
                              tune=biases[2:5]))]
  return model, base, arch, named


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
  checkpoint.save_params(str(tmp_path / "base"), base, {"model": arch})
  for name, adapter in named[:2]:
    checkpoint.save_adapters(str(tmp_path / name), adapter.lora, adapter.tuned_base,
                             dict(adapter.meta, train_size=16))
  bank = adapter_bank.load(str(tmp_path / "base"), {n: str(tmp_path / n) for n, _ in named[:2]})
  assert bank.names == ("haze", "rain") and bank.index("rain") == 1
  other = registry.build_preset("restormer", "micro")
  other_base = jax.jit(other.init)(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  wrong = _adapter(other_base, registry.module_architecture("restormer", other), "wrong",
                   seed=4, rank=2)
  checkpoint.save_adapters(str(tmp_path / "wrong"), wrong.lora, wrong.tuned_base, wrong.meta)
  with pytest.raises(ValueError, match=r"Adapter 'low_light' \(.*wrong\) does not fit"):
    adapter_bank.load(str(tmp_path / "base"), {"haze": str(tmp_path / "haze"),
                                               "low_light": str(tmp_path / "wrong")})
  with pytest.raises(ValueError, match="holds haze, rain"):
    bank.index("snow")
