"""LoRA as a parameter-tree transform: equivalences that fail if the transform were wrong."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sr_jax.adapt import lora
from sr_jax.util import trees


class ThreeConvs(nn.Module):
  """A small stack with explicitly named layers (3x3 convs and a dense head)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3), name="conv_a")(x))
    x = nn.relu(nn.Conv(8, (3, 3), name="conv_b")(x))
    return nn.Dense(3, name="head")(x)


def _conv(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _params_and_plan(rank=2, targets=(r".*/kernel",)):
  model = ThreeConvs()
  base = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
  plan = lora.make_plan(base, targets=targets, rank=rank, alpha=4.0)
  return model, base, plan


def test_conv_lora_equals_unmerged_branch():
  """W_eff matches PEFT's form: conv(x, W) + scale * conv1x1(conv_kxk(x, A), B)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 5, 6)), jnp.float32)
  a = jnp.asarray(rng.normal(size=(3 * 3 * 5, 2)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)
  merged = _conv(x, lora.effective_kernel(w, a, b, scale=0.5))
  unmerged = _conv(x, w) + 0.5 * _conv(_conv(x, a.reshape(3, 3, 5, 2)), b.reshape(1, 1, 2, 6))
  np.testing.assert_allclose(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_adapted_model_equals_base_at_init_and_merge_changes_only_targets():
  model, base, plan = _params_and_plan(targets=(r"conv_.*/kernel",))
  adapters = lora.init_adapters(jax.random.PRNGKey(1), base, plan)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 3))
  out_base = model.apply({"params": base}, x)
  out_adapted = model.apply({"params": lora.merge(base, adapters, plan)}, x)
  np.testing.assert_array_equal(out_base, out_adapted)  # B = 0: bit-identical.
  assert plan.paths == ("conv_a/kernel", "conv_b/kernel")
  # With nonzero B the adapted kernels (only) move.
  adapters = jax.tree.map(lambda t: t + 0.1, adapters)
  merged = trees.flatten(lora.merge(base, adapters, plan))
  flat = trees.flatten(base)
  assert not np.allclose(merged["conv_a/kernel"], flat["conv_a/kernel"])
  np.testing.assert_array_equal(merged["head/kernel"], flat["head/kernel"])


def test_rank_larger_than_layer_is_an_error_naming_it():
  _, base, _ = _params_and_plan()
  with pytest.raises(ValueError, match=r"head/kernel .*min\(fan_in=8, fan_out=3\)"):
    lora.make_plan(base, targets=(r".*/kernel",), rank=4, alpha=1.0)
  plan = lora.make_plan(base, targets=(r".*/kernel",), rank=4, alpha=1.0,
                        rank_overrides=("head/kernel=0", "conv_b/.*=2"))
  assert dict(plan.ranks) == {"conv_a/kernel": 4, "conv_b/kernel": 2}
  with pytest.raises(ValueError, match="No kernel matches"):
    lora.make_plan(base, targets=("nothing",), rank=1, alpha=1.0)


def test_split_combine_labels_and_optimizer_state_only_for_trainable():
  _, base, plan = _params_and_plan()
  params = {"base": base, "lora": lora.init_adapters(jax.random.PRNGKey(1), base, plan)}
  labels = lora.labels(params, (r".*/bias",))
  flat = trees.flatten(labels)
  assert flat["base/conv_a/kernel"] == lora.FROZEN
  assert flat["base/conv_a/bias"] == lora.TRAINABLE
  assert flat["lora/conv_a/kernel/a"] == lora.TRAINABLE
  trainable, frozen = lora.split(params, labels)
  combined = lora.combine(trainable, frozen)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), combined, params))
  tx = lora.partitioned_optimizer(optax.adam(1e-3), labels)
  state = tx.init(trainable)
  n_bias = sum(v.size for k, v in trees.flatten(base).items() if k.endswith("bias"))
  n_adapters = lora.count(params["lora"])
  # Adam keeps two moments, only for trainable leaves.
  assert lora.count(state) == 2 * (n_bias + n_adapters) + 1  # +1: the step count.
  assert lora.count(trainable) == n_bias + n_adapters


def _step_cost(model, params, labels, plan, x):
  trainable, frozen = lora.split(params, labels)
  tx = lora.partitioned_optimizer(optax.sgd(1e-2), labels)

  def step(trainable, opt_state, x):
    def loss_fn(t):
      p = lora.combine(t, frozen)
      return jnp.mean(model.apply({"params": lora.merge(p["base"], p["lora"], plan)}, x) ** 2)
    grads = jax.grad(loss_fn)(trainable)
    updates, opt_state = tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state

  compiled = jax.jit(step).lower(trainable, tx.init(trainable), x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost["flops"]


def test_compiled_step_computes_no_gradient_for_frozen_kernels():
  """FLOPs of the compiled step drop by the kernel-gradient convolutions when kernels freeze."""
  model, base, plan = _params_and_plan()
  x = jnp.ones((4, 32, 32, 3))
  full = {"base": base, "lora": {}}
  flops_full = _step_cost(model, full, lora.labels(full, full_finetune=True), None, x)
  flops_bias = _step_cost(model, full, lora.labels(full, (r".*/bias",)), None, x)
  n, h, w = x.shape[:3]
  # dL/dW of a conv is a correlation over every output pixel: 2 * N*H*W * kh*kw*cin*cout.
  kernel_grad_flops = sum(2 * n * h * w * np.prod(k.shape)
                          for k in (base["conv_a"]["kernel"], base["conv_b"]["kernel"],
                                    base["head"]["kernel"]))
  saved = flops_full - flops_bias
  assert 0.95 * kernel_grad_flops <= saved <= 1.2 * kernel_grad_flops, (saved, kernel_grad_flops)
  # LoRA on conv_b only: merged LoRA needs dL/dW_eff for conv_b, but none for conv_a or head.
  plan_b = lora.make_plan(base, targets=(r"conv_b/kernel",), rank=2, alpha=2.0)
  with_lora = {"base": base, "lora": lora.init_adapters(jax.random.PRNGKey(1), base, plan_b)}
  flops_lora = _step_cost(model, with_lora, lora.labels(with_lora), plan_b, x)
  frozen_grad_flops = sum(2 * n * h * w * np.prod(base[k]["kernel"].shape)
                          for k in ("conv_a", "head"))
  assert flops_full - flops_lora >= 0.9 * frozen_grad_flops, (flops_full, flops_lora)
