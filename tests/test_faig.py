"""FAIG attribution and scores, checked against independent computations.

The integral is compared with (a) a float64 NumPy left Riemann sum using the closed-form
gradient of a linear model and (b) an explicit Python loop of `jax.grad` calls on a NAFNet;
aggregates are checked against direct sums over the attribution tree.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax.adapt import faig
from sr_jax.models import registry
from sr_jax.util import trees

STEPS = 3


def _linear(params, x):
  return x @ params["w"]["kernel"] + params["w"]["bias"]


def _numpy_ig(base, tuned, x, t, steps, left=True):
  """float64 Riemann sum of the closed-form gradient of sum((XW + b - T)^2) along the path."""
  x = x.reshape(-1, x.shape[-1]).astype(np.float64)
  t = t.reshape(-1, t.shape[-1]).astype(np.float64)
  dw, db = base["kernel"] - tuned["kernel"], base["bias"] - tuned["bias"]
  gw, gb = np.zeros_like(dw), np.zeros_like(db)
  for s in (range(steps) if left else range(1, steps + 1)):
    w, b = tuned["kernel"] + s / steps * dw, tuned["bias"] + s / steps * db
    residual = x @ w + b - t
    gw += 2.0 * x.T @ residual
    gb += 2.0 * residual.sum(axis=0)
  return {"kernel": np.abs(gw / steps * dw), "bias": np.abs(gb / steps * db)}


def test_linear_model_matches_float64_closed_form():
  rng = np.random.default_rng(0)
  x, t = rng.normal(size=(6, 3, 2, 4)), rng.normal(size=(6, 3, 2, 3))
  base = {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))}
  tuned = {"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=(3,))}
  expected = _numpy_ig(base, tuned, x, t, steps=7)
  for batch_size in (0, 3):
    got = faig.integrated_gradients(_linear, {"w": base}, {"w": tuned}, x, t, steps=7,
                                    batch_size=batch_size)["w"]
    for name in ("kernel", "bias"):
      assert got[name].dtype == jnp.float32
      np.testing.assert_allclose(got[name], expected[name], rtol=1e-5,
                                 atol=1e-6 * np.abs(expected[name]).max())
  # The check can tell a left sum from the fine-tuned end from a sum over the other points.
  right = _numpy_ig(base, tuned, x, t, steps=7, left=False)
  assert np.abs(right["kernel"] - expected["kernel"]).max() > 1e-2 * expected["kernel"].max()


@pytest.fixture(scope="module")
def micro():
  """NAFNet-micro, a base tree, a tuned tree differing in every leaf, and 16x16 images."""
  model = registry.build_preset('nafnet', "micro")
  base = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
  leaves, treedef = jax.tree.flatten(base)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  # beta/gamma start at zero; moving every leaf makes every block contribute a gradient.
  tuned = jax.tree.unflatten(treedef, [
      leaf + 0.05 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)])
  rng = np.random.default_rng(2)
  gt = rng.uniform(size=(4, 16, 16, 3)).astype(np.float32)
  lq = (gt + 0.1 * rng.normal(size=gt.shape)).astype(np.float32)
  apply_fn = lambda p, x: model.apply({"params": p}, x)
  return apply_fn, base, tuned, lq, gt


@pytest.fixture(scope="module")
def micro_attribution(micro):
  apply_fn, base, tuned, lq, gt = micro
  return faig.integrated_gradients(apply_fn, base, tuned, lq, gt, steps=STEPS)


def test_nafnet_matches_explicit_grad_loop(micro, micro_attribution):
  apply_fn, base, tuned, lq, gt = micro
  loss = lambda p: jnp.sum(jnp.square(apply_fn(p, lq) - gt))
  grad_fn = jax.jit(jax.grad(loss))
  flat_base, flat_tuned = trees.flatten(base), trees.flatten(tuned)
  grad_sum = {k: np.zeros(v.shape) for k, v in flat_base.items()}
  for s in range(STEPS):
    point = {k: flat_tuned[k] + (s / STEPS) * (flat_base[k] - flat_tuned[k]) for k in flat_base}
    for k, g in trees.flatten(grad_fn(trees.unflatten(point))).items():
      grad_sum[k] += np.asarray(g, np.float64)
  got = trees.flatten(micro_attribution)
  assert set(got) == set(flat_base)
  scale = max(float(np.max(v)) for v in got.values())
  for k, g in grad_sum.items():
    delta = np.asarray(flat_base[k], np.float64) - np.asarray(flat_tuned[k], np.float64)
    expected = np.abs(g / STEPS * delta)
    np.testing.assert_allclose(got[k], expected, rtol=2e-4, atol=1e-5 * scale, err_msg=k)
  assert all(float(np.max(v)) > 0 for v in got.values())


def test_chunked_batches_equal_one_batch(micro, micro_attribution):
  apply_fn, base, tuned, lq, gt = micro
  chunked = faig.integrated_gradients(apply_fn, base, tuned, lq, gt, steps=STEPS, batch_size=2)
  scale = max(float(np.max(v)) for v in jax.tree.leaves(micro_attribution))
  for (path, a), b in zip(trees.flatten(micro_attribution).items(), jax.tree.leaves(chunked)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * scale, err_msg=path)


def test_identical_models_score_exactly_zero(micro):
  apply_fn, base, _, lq, gt = micro
  attribution = faig.integrated_gradients(apply_fn, base, base, lq, gt, steps=STEPS)
  assert all(not np.any(np.asarray(v)) for v in jax.tree.leaves(attribution))
  scores = faig.layer_scores(attribution)
  assert all(s.total == 0.0 and s.mean == 0.0 for s in scores)
  assert all(g["total"] == 0.0 for g in faig.group_scores(scores).values())


def test_param_groups_on_nafnet_paths(micro):
  paths = list(trees.flatten(micro[1]))
  pattern = registry.entry("nafnet").depthwise_kernels
  groups = [faig.param_group(p, pattern) for p in paths]
  # micro: 5 blocks (2 encoder, 1 middle, 2 decoder) of 18 leaves: conv1,3,4,5 and sca kernels,
  # the depthwise conv2 kernel, 6 conv biases, norm1/norm2 scale+bias, beta, gamma. Outside the
  # blocks: intro, downs_0/1 and ending (kernel + bias) and ups_0/1 (kernel only).
  counts = {g: groups.count(g) for g in faig.PARAM_GROUPS}
  assert counts == {"conv": 5 * 5 + 6, "depthwise": 5, "bias": 5 * 6 + 4, "norm": 5 * 4,
                    "beta_gamma": 5 * 2, "temperature": 0}
  assert all(g == "depthwise" for p, g in zip(paths, groups) if p.endswith("conv2/kernel"))
  assert faig.param_group("encoders_0_0/conv2/kernel") == "conv"  # no pattern, no depthwise
  assert faig.param_group("encoders_0_0/conv2/bias", pattern) == "bias"
  assert faig.param_group("middle_blks_0/norm2/bias", pattern) == "norm"
  assert faig.param_group("decoders_1_0/norm1/scale", pattern) == "norm"
  assert faig.param_group("decoders_1_0/gamma", pattern) == "beta_gamma"
  assert faig.param_group("latent_0/attn/temperature", pattern) == "temperature"
  with pytest.raises(ValueError, match="encoders_0_0/embedding"):
    faig.param_group("encoders_0_0/embedding")


def test_scores_aggregate_the_attribution(micro_attribution):
  pattern = registry.entry("nafnet").depthwise_kernels
  flat = trees.flatten(micro_attribution)
  scores = faig.layer_scores(micro_attribution, pattern)
  assert [s.path for s in scores] == list(flat)
  for s in scores:
    leaf = np.asarray(flat[s.path], np.float64)
    assert s.size == leaf.size and s.group == faig.param_group(s.path, pattern)
    assert s.total == pytest.approx(leaf.sum(), rel=1e-12)
    assert s.mean == pytest.approx(leaf.mean(), rel=1e-12)
  grand_total = sum(float(np.sum(np.asarray(v, np.float64))) for v in flat.values())
  n_entries = sum(int(np.size(v)) for v in flat.values())
  groups, blocks = faig.group_scores(scores), faig.block_scores(scores)
  assert list(groups) == [g for g in faig.PARAM_GROUPS if g != "temperature"]  # NAFNet has none.
  for agg in (groups, blocks):
    assert sum(a["total"] for a in agg.values()) == pytest.approx(grand_total, rel=1e-12)
    assert sum(a["size"] for a in agg.values()) == n_entries
    assert all(a["mean"] == pytest.approx(a["total"] / a["size"]) for a in agg.values())
  firsts = list(dict.fromkeys(p.split("/")[0] for p in flat))
  assert list(blocks) == firsts and {"intro", "ups_1", "middle_blks_0", "ending"} <= set(firsts)
  enc = blocks["encoders_0_0"]
  assert enc["total"] == pytest.approx(sum(
      s.total for s in scores if s.path.startswith("encoders_0_0/")), rel=1e-12)


def test_filter_scores_sum_spatial_taps(micro_attribution):
  flat = trees.flatten(micro_attribution)
  intro = np.asarray(flat["intro/kernel"])
  np.testing.assert_allclose(faig.filter_scores(intro), intro.sum(axis=(0, 1)), rtol=1e-6)
  assert faig.filter_scores(intro).shape == (3, 8)
  assert faig.filter_scores(flat["middle_blks_0/conv2/kernel"]).shape == (1, 64)
  dense = np.arange(6.0).reshape(2, 3)
  np.testing.assert_array_equal(faig.filter_scores(dense), dense)


def test_save_load_round_trip(tmp_path, micro_attribution):
  scores = faig.layer_scores(micro_attribution, registry.entry("nafnet").depthwise_kernels)
  meta = {"preset": "micro", "steps": STEPS, "images": np.int64(4)}
  path = os.path.join(tmp_path, "sub", "faig.json")
  faig.save_scores(path, scores, meta)
  loaded, loaded_meta = faig.load_scores(path)
  assert loaded == scores
  assert loaded_meta == {"preset": "micro", "steps": STEPS, "images": 4}
  assert os.listdir(os.path.dirname(path)) == ["faig.json"]
  with open(path) as f:
    assert set(json.load(f)["groups"]) == set(faig.PARAM_GROUPS) - {"temperature"}  # NAFNet


def test_mismatched_trees_and_batches_are_errors():
  rng = np.random.default_rng(0)
  x, t = rng.normal(size=(4, 2, 2, 4)), rng.normal(size=(4, 2, 2, 3))
  base = {"w": {"kernel": np.ones((4, 3)), "bias": np.zeros(3)}}
  with pytest.raises(ValueError, match="w/kernel"):
    faig.integrated_gradients(_linear, base, {"w": {"kernel": np.ones((4, 2)),
                                                    "bias": np.zeros(3)}}, x, t)
  with pytest.raises(ValueError, match="w/bias"):
    faig.integrated_gradients(_linear, base, {"w": {"kernel": np.ones((4, 3))}}, x, t)
  with pytest.raises(ValueError, match="w/extra"):
    faig.integrated_gradients(_linear, base, {"w": {**base["w"], "extra": np.ones(2)}}, x, t)
  with pytest.raises(ValueError, match=r"N=4.*batch_size=3"):
    faig.integrated_gradients(_linear, base, base, x, t, batch_size=3)
