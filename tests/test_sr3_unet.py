"""The SR3 UNet (sr_jax.models.sr3_unet) without PyTorch: sizes, pieces, modes and the registry.

The presets must have the parameter counts the PyTorch implementation has (counted from shapes,
nothing allocated); the noise-level encoding and the attention block must compute what an
independent float64 numpy transcription computes; any input size must work (padding to
size_multiple, output cropped back exactly); dropout must act only when not deterministic;
bfloat16 compute must stay close to float32; the registry must build it from a config, with
`model.dropout` overriding the preset's. Forward passes use the 'micro' preset.
(The PyTorch comparison and the checkpoint conversion: tests/test_convert_sr3.py.)
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sr_jax.adapt import adapters
from sr_jax.models import registry, sr3_unet

# Parameter counts of the PyTorch UNet with each preset's constructor arguments, counted with
# tests/torch_sr3_reference.py (whose keys and shapes equal the common implementation's):
# sr3_16_128 is REFERENCE's 97.8M model.
TORCH_COUNTS = {"sr3_16_128": 97_807_491, "sr3_64_512": 155_334_339,
                "paper_16_128": 514_987_139, "tiny": 2_633_955, "micro": 164_371}


@functools.lru_cache(maxsize=None)
def _forward(model, deterministic: bool):
  """model.apply jitted once per (model, mode): one compile beats eager dispatch's per-op
  compiles for every new shape."""
  return jax.jit(lambda params, rngs, *x: model.apply(
      {"params": params}, *x, deterministic=deterministic, rngs=rngs))


def _apply(model, params, *inputs, deterministic: bool = True, seed: int | None = None):
  """The model's output, with a 'dropout' rng when `seed` is given."""
  rngs = {} if seed is None else {"dropout": jax.random.PRNGKey(seed)}
  return _forward(model, deterministic)(params, rngs, *inputs)


def _random_params(model, seed: int = 0) -> dict:
  """Seeded params of the model's shapes without running its init (orthogonal init compiles a
  QR per kernel shape: seconds): kernels N(0, 1 / fan_in), norm scales 1 + 0.1 N(0, 1),
  biases 0.1 N(0, 1), so every leaf matters."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *model.example_inputs(8))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    name = path[-1].key
    if name == "kernel":
      return jnp.asarray(noise / np.sqrt(math.prod(leaf.shape[:-1])))
    return jnp.asarray((1.0 if name == "scale" else 0.0) + 0.1 * noise)

  return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def _param_shapes(model) -> dict:
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *model.example_inputs(16))
  return {"/".join(k.key for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}


@pytest.fixture(scope="module")
def micro():
  """(model, params, inputs) of the 'micro' preset at batch 2, 8x8, random params."""
  model = registry.build_preset('sr3', "micro", impl="xla")
  params = _random_params(model)
  rng = np.random.default_rng(0)
  inputs = (rng.standard_normal((2, 8, 8, 3)).astype(np.float32),
            rng.standard_normal((2, 8, 8, 3)).astype(np.float32),
            np.array([0.2, 0.7], np.float32))
  return model, params, inputs


# ----------------------------------------------------------------------------------------------
# Structure.


@pytest.mark.parametrize("preset", sorted(TORCH_COUNTS))
def test_preset_parameter_counts(preset):
  """Every preset has the PyTorch model's parameter count (traced abstractly)."""
  shapes = _param_shapes(registry.build_preset('sr3', preset, impl="xla"))
  assert sum(math.prod(s) for s in shapes.values()) == TORCH_COUNTS[preset]


def test_paths_mirror_the_torch_keys():
  """The paths the brief's key mapping names exist with the expected shapes (sr3_16_128)."""
  shapes = _param_shapes(registry.build_preset('sr3', "sr3_16_128", impl="xla"))
  assert shapes["downs_0/kernel"] == (3, 3, 6, 64)
  assert shapes["downs_1/res_block/block1/block_0/scale"] == (64,)
  assert shapes["downs_1/res_block/block1/block_3/kernel"] == (3, 3, 64, 64)
  assert shapes["downs_1/res_block/noise_func/noise_func_0/kernel"] == (64, 64)
  assert shapes["downs_3/conv/kernel"] == (3, 3, 64, 64)  # The first Downsample.
  assert shapes["downs_4/res_block/res_conv/kernel"] == (1, 1, 64, 128)
  assert shapes["downs_10/attn/qkv/kernel"] == (1, 1, 512, 1536)  # Level 3 has attention.
  assert "downs_10/attn/qkv/bias" not in shapes
  assert shapes["mid_0/attn/out/bias"] == (512,) and "mid_1/attn/norm/scale" not in shapes
  assert shapes["ups_2/res_block/res_conv/kernel"] == (1, 1, 1024, 512)
  assert shapes["noise_level_mlp_1/kernel"] == (64, 256)
  assert shapes["noise_level_mlp_3/bias"] == (64,)
  assert shapes["final_conv/block_0/scale"] == (64,)
  assert shapes["final_conv/block_3/kernel"] == (3, 3, 64, 3)
  attn = {p.split("/")[0] for p in shapes if "/attn/" in p}
  assert attn == {"downs_10", "downs_11", "mid_0", "ups_4", "ups_5", "ups_6"}


def test_init_is_orthogonal_with_zero_biases():
  """Kernels are orthogonal (gain 1) as (fan_in, fan_out) matrices, biases zero, norms 1 / 0:
  checked on a res block with a 1x1 shortcut and attention, which holds every kind of layer
  (3x3 and 1x1 convs, the bias-free qkv, Dense, GroupNorm)."""
  block = sr3_unet.ResnetBlocWithAttn(16, groups=4, with_attn=True, impl="xla")
  x, emb = jnp.zeros((1, 4, 4, 8)), jnp.zeros((1, 12))
  params = jax.jit(block.init)(jax.random.PRNGKey(3), x, emb)["params"]
  flat = {"/".join(k.key for k in p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert {"res_block/res_conv/kernel", "res_block/noise_func/noise_func_0/kernel",
          "attn/qkv/kernel", "attn/norm/scale"} <= set(flat)
  for path, value in flat.items():
    if path.endswith("kernel"):
      matrix = value.reshape(-1, value.shape[-1]).astype(np.float64)
      gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
      np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-5, err_msg=path)
    elif path.endswith("scale"):
      np.testing.assert_array_equal(value, 1.0, err_msg=path)
    else:
      np.testing.assert_array_equal(value, 0.0, err_msg=path)


# ----------------------------------------------------------------------------------------------
# Pieces against numpy.


def test_positional_encoding_matches_numpy():
  """sin / cos halves of level * 10000^(-k / (dim / 2)), as an independent float64 formula."""
  levels = np.array([0.0, 0.013, 0.5, 0.999], np.float32)
  got = np.asarray(sr3_unet.positional_encoding(jnp.asarray(levels), 64))
  freqs = 10000.0 ** (-np.arange(32) / 32.0)
  angles = levels.astype(np.float64)[:, None] * freqs[None]
  np.testing.assert_allclose(got, np.concatenate([np.sin(angles), np.cos(angles)], -1),
                             rtol=0, atol=1e-6)
  assert got.shape == (4, 64) and got.dtype == np.float32


def _group_norm(x, scale, bias, groups):
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean) ** 2).mean(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias


def test_attention_block_matches_float64_numpy(micro):
  """The micro model's level-1 attention (GroupNorm, qkv, softmax(q k^T / sqrt C) v, out, + x)
  against numpy in float64 at a non-square size."""
  _, params, _ = micro
  p = jax.tree.map(np.asarray, params["downs_3"]["attn"])
  x = np.random.default_rng(1).standard_normal((2, 4, 6, 32)).astype(np.float32)
  block = sr3_unet.SelfAttention(groups=4, impl="xla")
  got = np.asarray(block.apply({"params": p}, jnp.asarray(x)))
  x64 = x.astype(np.float64)
  norm = _group_norm(x64, p["norm"]["scale"], p["norm"]["bias"], 4).reshape(2, 24, 32)
  q, k, v = np.split(norm @ p["qkv"]["kernel"][0, 0].astype(np.float64), 3, axis=-1)
  logits = q @ k.transpose(0, 2, 1) / np.sqrt(32)
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  out = (attn @ v) @ p["out"]["kernel"][0, 0] + p["out"]["bias"]
  np.testing.assert_allclose(got, out.reshape(x.shape) + x64, rtol=0, atol=2e-5)


# ----------------------------------------------------------------------------------------------
# The forward pass.


def test_output_shape_dtype_and_impls(micro):
  """eps has the noisy image's shape, float32; 'shifted' and 'xla' agree; a (B, 1) noise
  level (what the PyTorch trainer passes) equals the (B,) one."""
  model, params, (condition, noisy, level) = micro
  out = _apply(model, params, condition, noisy, level)
  assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32
  assert float(jnp.abs(out).max()) > 0.1
  shifted = _apply(model.clone(impl="shifted"), params, condition, noisy, level)
  np.testing.assert_allclose(shifted, out, rtol=0, atol=1e-5)
  column = _apply(model, params, condition, noisy, level[:, None])
  np.testing.assert_array_equal(column, out)
  other_level = _apply(model, params, condition, noisy, level[::-1])
  assert float(jnp.abs(other_level - out).max()) > 1e-3  # The level is used.


def test_sizes_off_the_multiple_are_padded_and_cropped():
  """A 3-level micro (size_multiple 4) maps an H x W input to H x W: exactly the crop of its
  output on the bottom/right reflect-padded input."""
  model = registry.build_preset('sr3', "micro", channel_mults=(1, 2, 2), impl="xla")
  assert model.size_multiple == 4 and model.input_channels == 3
  params = _random_params(model, seed=1)
  rng, hw = np.random.default_rng(2), (7, 5)
  condition, noisy = (rng.standard_normal((1, *hw, 3)).astype(np.float32) for _ in range(2))
  level = np.array([0.4], np.float32)
  out = _apply(model, params, condition, noisy, level)
  assert out.shape == (1, *hw, 3)
  pad = ((0, 0), (0, -hw[0] % 4), (0, -hw[1] % 4), (0, 0))
  padded = _apply(model, params, np.pad(condition, pad, mode="reflect"),
                  np.pad(noisy, pad, mode="reflect"), level)
  np.testing.assert_array_equal(out, padded[:, :hw[0], :hw[1]])


def test_dropout_only_when_not_deterministic(micro):
  """With dropout 0.5, two 'dropout' rngs give different outputs in training mode; the
  deterministic output ignores the rng and equals the default call's."""
  model, params, inputs = micro
  model = model.clone(dropout=0.5)
  train = lambda seed: _apply(model, params, *inputs, deterministic=False, seed=seed)
  assert float(jnp.abs(train(0) - train(1)).max()) > 1e-3
  np.testing.assert_array_equal(train(0), train(0))
  evaluate = lambda seed: _apply(model, params, *inputs, seed=seed)
  np.testing.assert_array_equal(evaluate(0), evaluate(1))
  np.testing.assert_array_equal(evaluate(0), _apply(model, params, *inputs))
  np.testing.assert_array_equal(evaluate(0), _apply(model.clone(dropout=0.0), params, *inputs,
                                                    deterministic=False))


def test_bfloat16_compute_is_close_to_float32(micro):
  """bfloat16 compute (float32 params, statistics, softmax, output) stays within a few
  percent of float32."""
  model, params, inputs = micro
  want = _apply(model, params, *inputs)
  got = _apply(model.clone(dtype=jnp.bfloat16), params, *inputs)
  assert got.dtype == jnp.float32
  assert float(jnp.abs(got - want).max()) < 0.05 * float(jnp.abs(want).max())


def test_bad_inputs_are_refused(micro):
  model, params, (condition, noisy, level) = micro
  with pytest.raises(ValueError, match=r"condition with 3 channels, got shape \(2, 8, 8, 4\)"):
    model.apply({"params": params}, np.zeros((2, 8, 8, 4), np.float32), noisy, level)
  with pytest.raises(ValueError, match=r"differ in batch or size"):
    model.apply({"params": params}, condition[:, :4], noisy, level)
  with pytest.raises(ValueError, match=r"one noise level per image \(2\)"):
    model.apply({"params": params}, condition, noisy, level[:1])
  with pytest.raises(ValueError, match=r"needs norm_groups dividing 16.*--set norm_groups"):
    jax.eval_shape(model.clone(norm_groups=32).init, jax.random.PRNGKey(0),
                   *model.example_inputs(8))


# ----------------------------------------------------------------------------------------------
# Registry.


def _config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({**dict(name="sr3", preset="micro", dtype="float32",
                                           conv_impl="auto", width=0, dropout=-1.0), **fields})


def test_registry_round_trip():
  """config.model -> module -> recorded architecture -> the same module and parameter tree."""
  model = registry.build_model(_config())
  assert isinstance(model, sr3_unet.SR3UNet)
  arch = registry.architecture(_config())
  preset = sr3_unet.PRESETS["micro"]
  assert arch == {"name": "sr3", **{k: list(v) if isinstance(v, tuple) else v
                                    for k, v in preset.items() if k != "dropout"}}
  assert registry.matching_preset(arch) == "micro"
  rebuilt = adapters.model_from_architecture(arch)
  assert registry.module_architecture("sr3", rebuilt) == arch
  shapes = adapters.architecture_shapes(arch)
  assert sum(math.prod(s) for s in shapes.values()) == TORCH_COUNTS["micro"]
  wide = registry.architecture(_config(width=24))
  assert wide["inner_channel"] == 24 and registry.matching_preset(wide) is None
  assert registry.entry("sr3").depthwise_kernels == sr3_unet.DEPTHWISE_KERNELS


def test_example_inputs_for_sr3_and_single_input_models():
  """registry.example_inputs gives SR3's three inputs and other models' one image; init takes
  them as they are."""
  model = registry.build_model(_config())
  condition, noisy, level = registry.example_inputs(model, 12, batch=2)
  assert (condition.shape, noisy.shape, level.shape) == ((2, 12, 12, 3), (2, 12, 12, 3), (2,))
  jax.eval_shape(model.init, jax.random.PRNGKey(0), *registry.example_inputs(model, 12))
  srresnet = registry.build_model(ml_collections.ConfigDict(dict(
      name="srresnet", preset="micro", dtype="float32", conv_impl="auto", width=0)))
  (image,) = registry.example_inputs(srresnet, 16)
  assert image.shape == (1, 16, 16, 3)


def test_dropout_override_from_the_config():
  """config.model.dropout >= 0 replaces the preset's dropout; -1 (or absent) keeps it; a model
  without dropout refuses it naming the option and the model."""
  base = _config(preset="sr3_16_128")
  assert registry.build_model(base).dropout == 0.2
  base.dropout = 0.0
  assert registry.build_model(base).dropout == 0.0
  base.dropout = 0.35
  assert registry.build_model(base).dropout == 0.35
  del base["dropout"]
  assert registry.build_model(base).dropout == 0.2
  nafnet = ml_collections.ConfigDict(dict(name="nafnet", preset="micro", dtype="float32",
                                          conv_impl="auto", width=0, dropout=0.1))
  with pytest.raises(ValueError, match=r"config\.model\.dropout=0\.1 but the nafnet model"):
    registry.build_model(nafnet)
  nafnet.dropout = -1.0
  registry.build_model(nafnet)
