"""LoRA's training layouts (sr_jax.adapt.lora_branch, lora_layouts): unmerged and factored compute
the same function and gradients as merged for every layer kind and model, fewer FLOPs where the
cost model says so, no state for frozen leaves, adapters trained unmerged or factored export
merged to the same outputs, and the chooser picks what its cost model ranks fastest."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lora_nafnet
from sr_jax.adapt import lora, lora_branch, lora_layouts, roofline
from sr_jax.jobs import train
from sr_jax.models import layers, registry
from sr_jax.tools import step_timing
from sr_jax.train import run_setup
from sr_jax.util import exports, sharding, trees


class EveryLayerKind(nn.Module):
  """Each layer kind an adapter may sit on: 3x3 conv, strided patchify conv, 1x1 conv, a flax
  grouped conv, a flax strided conv and a dense layer (the CPU formulation where there is one)."""
  impl: str = "shifted"

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(layers.Conv(8, 3, padding=1, impl=self.impl, name="dense3x3")(x))
    x = nn.gelu(layers.Conv(16, 2, strides=2, padding=0, impl=self.impl, name="patchify")(x))
    x = nn.gelu(layers.Conv1x1(12, impl=self.impl, name="pointwise")(x))
    x = nn.gelu(nn.Conv(12, (3, 3), feature_group_count=3, name="grouped")(x))
    x = nn.gelu(nn.Conv(6, (3, 3), strides=(2, 2), padding="SAME", name="strided")(x))
    return nn.Dense(5, name="dense")(x)


def _random_adapters(base, plan, seed=1):
  """Adapters with a nonzero B, so the branch contributes."""
  adapters = lora.init_adapters(jax.random.PRNGKey(seed), base, plan)
  leaves, treedef = jax.tree.flatten(adapters)
  key = jax.random.PRNGKey(seed + 1)
  return treedef.unflatten([v + 0.05 * jax.random.normal(jax.random.fold_in(key, i), v.shape)
                            for i, v in enumerate(leaves)])


def _loss_and_grads(model, params, plan, inputs, layouts, extra=r".*/bias"):
  """Loss and gradients with respect to the adapters and the biases (as a LoRA run trains);
  layouts None: the reference, autodiff through the merged tree (lora.merge) itself."""
  labels = lora.labels(params, (extra,))
  trainable, frozen = lora.split(params, labels)

  def loss_fn(t):
    p = lora.combine(t, frozen)
    if layouts is None:
      out = model.apply({"params": lora.merge(p["base"], p["lora"], plan)}, *inputs)
    else:
      out = lora_branch.apply_model(model, p, plan, *inputs, layouts=layouts)
    return jnp.mean(jnp.square(out))

  return jax.jit(jax.value_and_grad(loss_fn))(trainable)


def _assert_same_loss_and_grads(model, base, plan, inputs, rtol=2e-4):
  """Every layout, and a mix of all three, against autodiff through the merged tree: same
  loss, same gradients."""
  params = {"base": base, "lora": _random_adapters(base, plan)}
  everything, paths = frozenset(plan.paths), plan.paths
  mixed = lora_branch.Layouts(unmerged=frozenset(paths[0::3]), factored=frozenset(paths[1::3]))
  loss_m, grads_m = _loss_and_grads(model, params, plan, inputs, None)
  flat_m = trees.flatten(grads_m)
  assert any(k.startswith("lora/") for k in flat_m)
  for layouts in (lora_branch.Layouts(), lora_branch.Layouts(unmerged=everything),
                  lora_branch.Layouts(factored=everything), mixed):
    loss, grads = _loss_and_grads(model, params, plan, inputs, layouts)
    np.testing.assert_allclose(loss, loss_m, rtol=rtol)
    flat = trees.flatten(grads)
    assert flat.keys() == flat_m.keys()
    for path, value in flat_m.items():
      scale = float(np.max(np.abs(value))) or 1.0
      np.testing.assert_allclose(flat[path], value, atol=rtol * scale, err_msg=path)


@pytest.mark.parametrize("impl", ["shifted", "xla"])
def test_every_layer_kind_in_every_layout_equals_merged(impl):
  model = EveryLayerKind(impl=impl)
  x = jnp.asarray(np.random.default_rng(0).random((2, 8, 8, 3)), jnp.float32)
  base = model.init(jax.random.PRNGKey(0), x)["params"]
  plan = lora.make_plan(base, targets=(r".*/kernel",), rank=2, alpha=3.0)
  assert len(plan.paths) == 6
  _assert_same_loss_and_grads(model, base, plan, (x,))


MODELS = [("nafnet", "micro", 16), ("restormer", "micro", 16), ("rrdbnet", "micro", 8),
          ("srresnet", "micro", 8), ("mesrgan", "micro", 8), ("sr3", "micro", 16)]


@pytest.mark.parametrize("name,preset,size", MODELS, ids=[m[0] for m in MODELS])
def test_every_model_in_every_layout_equals_merged(name, preset, size):
  model = registry.build_preset(name, preset)
  inputs = [jnp.asarray(np.random.default_rng(i).random(np.shape(v)), jnp.float32)
            for i, v in enumerate(registry.example_inputs(model, size, batch=2))]
  base = model.init(jax.random.PRNGKey(0), *inputs)["params"]
  depthwise = registry.entry(name).depthwise_kernels
  rank = 2 if name != "sr3" else 1
  plan = lora.make_plan(base, targets=(r".*/kernel",), rank=rank, alpha=2.0, exclude=(depthwise,))
  _assert_same_loss_and_grads(model, base, plan, inputs)


def _compiled_flops(formulation, cost_model="flops"):
  c = lora_nafnet.get_config("demo")
  c.model.preset, c.lora.enabled, c.lora.rank, c.lora.alpha = "tiny", True, 4, 4.0
  c.lora.formulation, c.data.crop_size, c.batch_size, c.mesh.data = formulation, 64, 8, 1
  c.lora.cost_model = cost_model
  run = run_setup.build_run(c, "/tmp/unused", None)
  batch = sharding.global_batch(step_timing.random_batch(c), run.mesh)
  compiled = run.train_step().lower(run.state, run.frozen, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  model = registry.build_model(c.model)
  base = run_setup.init_base(model, c.data.crop_size, jax.random.PRNGKey(0))
  per_device = c.batch_size // run.mesh.size
  costs = {x.path: x for x in lora_layouts.layer_costs(
      model, base, run.plan, jnp.zeros((per_device, 64, 64, 3)))}
  return cost["flops"], run, costs


def test_the_compiled_step_drops_the_weight_gradients_of_kernels_not_merged():
  """FLOPs fall from merged to 'auto' (the multiply-add rule) by the weight gradients of the
  kernels run unmerged (2 x pixels x kernel size each) less their branches' cost, and from
  merged to factored by every weight gradient less the factors' passes, as XLA counts them."""
  merged, _, _ = _compiled_flops("merged")
  auto, run, costs = _compiled_flops("auto")
  unmerged = run.objective.layouts.unmerged
  assert unmerged and not run.objective.layouts.factored  # The wide layers go unmerged...
  assert len(unmerged) < len(run.plan.paths)  # ...the narrowest stay merged.

  def weight_grads(paths):
    return sum(2 * costs[p].out_pixels * np.prod(costs[p].kernel) for p in paths)

  branches = sum(2 * costs[p].macs["unmerged"] for p in unmerged)
  assert merged - auto >= 0.85 * (weight_grads(unmerged) - branches), (merged, auto)
  assert merged - auto <= 1.1 * sum(2 * (costs[p].macs["merged"] - costs[p].macs["unmerged"])
                                    for p in unmerged)
  factored, run, _ = _compiled_flops("factored")
  assert run.objective.layouts.factored == frozenset(run.plan.paths)
  taps = sum(2 * costs[p].macs["factored"] for p in costs)
  everything = weight_grads(costs)
  assert merged - factored >= 0.85 * (everything - taps), (merged, factored, everything, taps)
  assert merged - factored <= 1.1 * sum(2 * (c.macs["merged"] - c.macs["factored"])
                                        for c in costs.values())


def test_cost_model_counts_each_layouts_multiply_adds():
  """Per output pixel: kh kw cin cout merged, 3 r (kh kw cin + cout) unmerged, 2 r (...)
  factored (the issue's example: a 1x1 conv 32 -> 32 at r = 8 is cheaper merged by
  multiply-adds; 512 -> 1024 unmerged)."""
  def cost(cin, cout, rank):
    model = nn.Sequential([layers.Conv1x1(cout, name="c")])
    x = jnp.zeros((1, 64, 64, cin))
    base = model.init(jax.random.PRNGKey(0), x)["params"]
    plan = lora.make_plan(base, targets=(r".*/kernel",), rank=rank, alpha=1.0)
    (only,) = lora_layouts.layer_costs(model, base, plan, x)
    assert only.macs["merged"] == 64 * 64 * cin * cout + 4 * cin * rank * cout
    assert only.macs["unmerged"] == 3 * 64 * 64 * rank * (cin + cout)
    assert only.macs["factored"] == 2 * 64 * 64 * rank * (cin + cout) + 2 * cin * rank * cout
    return only.cheaper

  assert cost(32, 32, 8) == "merged"
  assert cost(512, 1024, 8) == "unmerged"
  with pytest.raises(ValueError, match="config.lora.formulation"):
    lora_layouts.choose([], "fast")


@pytest.mark.parametrize("layout", ["unmerged", "factored"])
def test_a_run_not_merged_keeps_no_state_for_frozen_leaves_and_exports_merged(tmp_path, layout):
  """Two steps trained all-unmerged (or all-factored): optimizer moments only for adapters and
  tuned leaves, the frozen kernels bit-identical, and the merged export computes what the
  adapters did."""
  c = lora_nafnet.get_config("demo")
  c.model.preset, c.data.crop_size, c.data.eval_max_size, c.batch_size = "micro", 32, 48, 8
  c.base.num_steps, c.num_steps, c.log_every, c.checkpoint_every = 0, 2, 1, 2
  c.lora.enabled, c.lora.rank, c.lora.alpha, c.lora.formulation = True, 2, 2.0, layout
  c.num_image_summaries = 0
  run = run_setup.build_run(c, str(tmp_path), None)
  assert getattr(run.objective.layouts, layout) == frozenset(run.plan.paths)
  trainable = lora.count(run.state.trainable)
  moments = sum(int(np.size(x)) for x in jax.tree.leaves(run.state.opt_state)
                if jnp.issubdtype(x.dtype, jnp.floating))
  assert moments == 2 * trainable  # Adam's two moments, for trainable leaves only.
  train.train_and_evaluate(c, str(tmp_path))
  export, _ = exports.load_params(os.path.join(tmp_path, "export", "params"))
  adapters, tuned, meta = exports.load_adapters(os.path.join(tmp_path, "export", "adapters"))
  plan = lora.LoraPlan.from_json(meta["lora_plan"])
  init = run_setup.init_base(registry.build_model(c.model), 32, jax.random.PRNGKey(c.seed))
  flat_init, flat_tuned = trees.flatten(init), trees.flatten(tuned)
  for path in plan.paths:
    assert path not in flat_tuned
    # The merged export is the untouched kernel plus its adapter's delta.
    assert not np.allclose(trees.flatten(export)[path], flat_init[path])
  base = trees.unflatten(dict(flat_init, **flat_tuned))
  model = registry.build_model(c.model)
  x = jnp.asarray(np.random.default_rng(5).random((2, 32, 32, 3)), jnp.float32)
  expected = lora_branch.apply_model(model, {"base": base, "lora": adapters}, plan, x,
                                     layouts=lora_branch.Layouts(unmerged=frozenset(plan.paths)))
  np.testing.assert_allclose(model.apply({"params": export}, x), expected, atol=2e-5)
  assert json.loads((tmp_path / "export" / "adapters" / "meta.json").read_text())["lora_plan"]


def _costs(*layers_cin_cout_rank):
  """layer_costs of a chain of 1x1 convs (cin -> cout at rank r each) on a 64x64 input."""
  model = nn.Sequential([layers.Conv1x1(cout, name=f"c{i}")
                         for i, (_, cout, _) in enumerate(layers_cin_cout_rank)])
  x = jnp.zeros((1, 64, 64, layers_cin_cout_rank[0][0]))
  base = model.init(jax.random.PRNGKey(0), x)["params"]
  plan = lora.make_plan(base, targets=(r".*/kernel",), rank=8, alpha=1.0)
  return lora_layouts.layer_costs(model, base, plan, x)


def test_the_roofline_chooser_never_picks_a_layout_its_model_ranks_slower():
  """Bytes counted as the docstring says; 'auto' takes the layout of the least predicted time
  per layer; with bytes free (FLOPS_ONLY) it is the former rule, merged or unmerged by
  multiply-adds."""
  costs = _costs((32, 32, 8), (32, 512, 8), (512, 1024, 8))
  narrow = costs[0]
  pixels = 64 * 64
  assert narrow.bytes["merged"] == 4 * (pixels * 32 + pixels * 32 + 6 * 32 * 32)
  assert narrow.bytes["unmerged"] == 4 * (4 * pixels * 32 + 4 * pixels * 32 + 4 * pixels * 8)
  assert narrow.bytes["factored"] == 4 * (2 * pixels * 32 + 2 * pixels * 32 + 4 * pixels * 8
                                          + 4 * 32 * 32)
  cpu_like = roofline.Machine("slow memory", macs_per_s=5e10, bytes_per_s=1e10)
  gpu_like = roofline.Machine("fast memory", macs_per_s=5e10, bytes_per_s=1e13)
  for machine in (cpu_like, gpu_like):
    chosen = lora_layouts.choose(costs, "auto", machine)
    for c in costs:
      t = c.seconds(machine)
      assert all(t[chosen.of(c.path)] <= t[k] for k in lora_branch.LAYOUTS), (c.path, t)
  flops_rule = lora_layouts.choose(costs, "auto", roofline.FLOPS_ONLY)
  assert not flops_rule.factored
  assert flops_rule.unmerged == {c.path for c in costs if c.cheaper == "unmerged"}
  assert lora_layouts.choose(costs, "auto") == flops_rule  # The default machine.
  # The middle layer (32 -> 512) has fewer multiply-adds unmerged, but the branch moves four
  # times the bytes of the weight gradient: slow memory keeps it out of the unmerged layout,
  # fast memory lets its multiply-adds decide.
  middle = costs[1].path
  assert middle in flops_rule.unmerged
  assert lora_layouts.choose(costs, "auto", cpu_like).of(middle) != "unmerged"
  assert lora_layouts.choose(costs, "auto", gpu_like).of(middle) == "factored"
  assert lora_layouts.choose(costs, "factored").factored == {c.path for c in costs}
  with pytest.raises(ValueError, match="config.lora.cost_model"):
    lora_layouts.cost_machine("guess")


def test_layouts_name_each_kernel_once_and_only_known_layouts():
  chosen = lora_branch.Layouts.from_choice({"a/kernel": "factored", "b/kernel": "merged",
                                            "c/kernel": "unmerged"})
  assert [chosen.of(p) for p in ("a/kernel", "b/kernel", "c/kernel", "d/kernel")] == [
      "factored", "merged", "unmerged", "merged"]
  assert (chosen.route("a/kernel"), chosen.route("b/kernel")) == ("rank", "kernel")
  with pytest.raises(ValueError, match="both unmerged and factored"):
    lora_branch.Layouts(unmerged=frozenset({"a/kernel"}), factored=frozenset({"a/kernel"}))
  with pytest.raises(ValueError, match="Unknown LoRA layouts"):
    lora_branch.Layouts.from_choice({"a/kernel": "stacked"})
  with pytest.raises(ValueError, match="auto_layouts"):
    lora_layouts.choose(_costs((32, 32, 8)), "auto", roofline.FLOPS_ONLY, ("stacked",))


def test_the_flops_cost_model_reproduces_the_former_choice_on_nafnet_w32():
  """The multiply-add rule on NAFNet-w32 at r = 8, batch 4, 128 x 128 (the speed table's
  LoRA arm) sends 172 of its 189 adapted kernels unmerged, as measured before the roofline."""
  c = lora_nafnet.get_config()
  c.batch_size, c.data.crop_size, c.lora.cost_model = 4, 128, "flops"
  model = registry.build_model(c.model)
  base = jax.eval_shape(lambda: run_setup.init_base(model, 128, jax.random.PRNGKey(0)))
  plan = run_setup.lora_plan(c, base)
  layouts = run_setup.choose_layouts(c, model, registry.model_facts(c.model), base, plan, 1)
  assert (len(layouts.unmerged), len(plan.paths), len(layouts.factored)) == (172, 189, 0)


def test_the_roofline_is_measured_once_per_device_kind_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("SR_JAX_CACHE", str(tmp_path))
  calls = []
  real = roofline.measure

  def counted(device=None):
    calls.append(1)
    return real(device)

  monkeypatch.setattr(roofline, "measure", counted)
  first = roofline.current()
  second = roofline.current()
  assert len(calls) == 1 and first == second
  assert first.macs_per_s > 1e8 and first.bytes_per_s > 1e8  # Any machine this runs on.
  cached = json.loads((tmp_path / "roofline.json").read_text())
  assert cached[roofline.device_kind()]["macs_per_s"] == first.macs_per_s


def test_an_adapted_kernel_in_a_layer_kind_training_cannot_run_is_named_up_front():
  model = nn.Sequential([nn.ConvTranspose(4, (2, 2))])
  x = jnp.zeros((1, 8, 8, 3))
  base = model.init(jax.random.PRNGKey(0), x)["params"]
  plan = lora.make_plan(base, targets=(r".*/kernel",), rank=2, alpha=2.0)
  with pytest.raises(TypeError, match="layers_0 is a ConvTranspose: leave it out of config.lora"):
    lora_layouts.layer_costs(model, base, plan, x)
