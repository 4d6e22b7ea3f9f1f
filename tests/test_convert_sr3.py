"""Conversion of SR3 UNet checkpoints of the common PyTorch implementation (`--arch sr3`).

A saved generator is the GaussianDiffusion state dict: the UNet under `denoise_fn.` beside the
noise-schedule buffers. Such a file (tests/torch_sr3_reference.py builds it) must convert, with
or without the prefix, to a Flax model that computes the PyTorch UNet's output to 1e-4; the
architecture must be read from keys and shapes (the full-size 16->128 and 64->512 layouts,
built on the meta device, give their presets; norm_groups, which no shape shows, from a
matching preset or the default, with a logged note); missing and unknown keys must be named as
the file spells them; the CLI must convert a .pth end to end. PyTorch tests skip without torch.
"""

import functools
import logging
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax import convert
from sr_jax.adapt import adapters
from sr_jax.convert import mapping, sr3
from sr_jax.models import registry
from sr_jax.util import exports, trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4  # Max abs error between the PyTorch and the converted Flax forward pass.
# Micro-sized, 3 levels, attention at level 1, two res blocks per level (res_conv appears).
TINY = dict(in_channel=6, out_channel=3, inner_channel=16, norm_groups=4,
            channel_mults=(1, 2, 2), attn_levels=(1,), res_blocks=2)

pytestmark = pytest.mark.usefixtures("single_threaded_torch")


def _ref():
  """tests/torch_sr3_reference.py, or a skip when PyTorch is not installed."""
  pytest.importorskip("torch")
  import torch_sr3_reference  # pylint: disable=g-import-not-at-top
  return torch_sr3_reference


def _torch_unet(fields: dict, image_size: int = 16, **kwargs):
  """The reference UNet of sr_jax fields: attn_levels become attn_res at `image_size`."""
  ref = _ref()
  attn_res = tuple(image_size // 2 ** level for level in fields["attn_levels"])
  args = {k: v for k, v in fields.items() if k != "attn_levels"}
  return ref.UNet(**args, attn_res=attn_res, image_size=image_size, **kwargs)


@functools.lru_cache(maxsize=None)
def _tiny_file() -> tuple:
  """(the random TINY UNet, its Diffusion state dict: prefixed, with schedule buffers)."""
  ref = _ref()
  unet = ref.randomize_(_torch_unet(TINY), seed=0).eval()
  return unet, ref.numpy_state(ref.Diffusion(unet))


def _meta_state(module) -> dict:
  """Zero-stride numpy arrays with a (meta-device) module's state-dict keys and shapes."""
  return {k: np.broadcast_to(np.float32(0), tuple(v.shape))
          for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# 1. The forward pass.


def test_gen_checkpoint_matches_torch(torch):
  """The prefixed file with schedule buffers converts (norm_groups given: no preset has this
  layout) to a model computing the PyTorch output to 1e-4 on a non-square input, for (B,) and
  (B, 1) noise levels; the condition is the input's first channels."""
  unet, state = _tiny_file()
  assert "denoise_fn.downs.0.weight" in state and "posterior_mean_coef2" in state
  result = convert.convert_state_dict("sr3", state, overrides={"norm_groups": 4})
  assert result.architecture == {"name": "sr3", **{k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in TINY.items()}}
  assert result.inferred["norm_groups"] == sr3.DEFAULT_NORM_GROUPS
  assert result.num_params == sum(p.numel() for p in unet.parameters())
  assert result.preset is None
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 16, 12)).astype(np.float32)
  level = np.array([0.15, 0.85], np.float32)
  with torch.no_grad():
    want = unet(torch.from_numpy(x), torch.from_numpy(level)).numpy()
  model = adapters.model_from_architecture(result.architecture, impl="xla")
  params = jax.tree.map(jnp.asarray, trees.unflatten(result.params))
  forward = jax.jit(lambda c, n, l: model.apply({"params": params}, c, n, l))
  nhwc = x.transpose(0, 2, 3, 1)
  got = np.asarray(forward(nhwc[..., :3], nhwc[..., 3:], level)).transpose(0, 3, 1, 2)
  assert got.shape == want.shape == (2, 3, 16, 12)
  assert np.abs(want).max() > 0.3  # Non-trivial outputs, so the tolerance means something.
  np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
  column = np.asarray(forward(nhwc[..., :3], nhwc[..., 3:], level[:, None]))
  np.testing.assert_array_equal(column.transpose(0, 3, 1, 2), got)


def test_unprefixed_file_converts_to_the_same_tree():
  """The UNet's own state dict (no denoise_fn., no buffers) gives the identical tree."""
  ref = _ref()
  unet, state = _tiny_file()
  prefixed = convert.convert_state_dict("sr3", state, overrides={"norm_groups": 4})
  plain = convert.convert_state_dict("sr3", ref.numpy_state(unet),
                                     overrides={"norm_groups": 4})
  assert plain.architecture == prefixed.architecture
  assert sorted(plain.params) == sorted(prefixed.params)
  for path, value in prefixed.params.items():
    np.testing.assert_array_equal(plain.params[path], value, err_msg=path)
  kernel = plain.params["downs_1/res_block/noise_func/noise_func_0/kernel"]
  linear = state["denoise_fn.downs.1.res_block.noise_func.noise_func.0.weight"]
  np.testing.assert_array_equal(kernel, linear.T)  # Linear (out, in) -> Dense (in, out).
  back = mapping.export(prefixed.params, sr3.RULES, sr3.BROADCAST)
  assert sorted(back) == sorted(ref.numpy_state(unet))  # And back, key for key.


# ----------------------------------------------------------------------------------------------
# 2. Architecture inference.


@functools.lru_cache(maxsize=None)
def _preset_shapes(preset: str) -> dict:
  module = registry.entry("sr3").build(preset)
  return adapters.architecture_shapes(registry.module_architecture("sr3", module))


@pytest.mark.parametrize("preset,image_size", [("sr3_16_128", 128), ("sr3_64_512", 512),
                                               ("paper_16_128", 128)])
def test_full_size_layouts_give_their_presets(torch, preset, image_size, caplog):
  """Full-size generator files (meta device: nothing allocated) read back as their presets,
  norm_groups included (16 for 64->512, from the preset match, with a note); every key and
  shape is one the preset's Flax tree expects, and the count is the PyTorch model's."""
  ref = _ref()
  fields = {k: v for k, v in registry.entry("sr3").presets[preset].items() if k != "dropout"}
  with torch.device("meta"):
    state = _meta_state(ref.Diffusion(_torch_unet(fields, image_size)))
  with caplog.at_level(logging.INFO):
    inferred = sr3.infer_architecture(state)
  assert inferred == fields
  architecture = registry.module_architecture("sr3", registry.entry("sr3").build(
      "micro", **inferred))
  assert registry.matching_preset(architecture) == preset
  assert f"preset '{preset}'" in caplog.text and "norm_groups" in caplog.text
  shapes = _preset_shapes(preset)
  unet_state, _ = sr3.normalize(state)
  expected = {mapping.torch_key(p, sr3.RULES): mapping.torch_shape(p, s, sr3.BROADCAST)
              for p, s in shapes.items()}
  assert expected == {k: tuple(v.shape) for k, v in unet_state.items()}
  count = mapping.parameter_count(shapes)
  assert count == sum(math.prod(v.shape) for v in unet_state.values())
  if preset == "sr3_16_128":
    assert count == 97_807_491


def test_reading_mults_blocks_and_attention(torch, caplog):
  """Another layout (4 levels, 3 blocks, attention at levels 0 and 2, inner 8, 1 input
  channel) is read from the downs list; norm_groups falls back to 32 with a note."""
  fields = dict(in_channel=4, out_channel=3, inner_channel=8, norm_groups=4,
                channel_mults=(1, 3, 2, 4), attn_levels=(0, 2), res_blocks=3)
  with torch.device("meta"):
    state = _meta_state(_torch_unet(fields, image_size=32))
  with caplog.at_level(logging.INFO):
    inferred = sr3.infer_architecture(state)
  assert inferred == {**fields, "norm_groups": 32}
  assert "assuming the default 32" in caplog.text and "--set norm_groups" in caplog.text


def test_micro_file_takes_the_presets_norm_groups(caplog):
  """A file with the 'micro' layout converts without options: norm_groups 4 from the preset."""
  ref = _ref()
  micro = {k: v for k, v in registry.entry("sr3").presets["micro"].items() if k != "dropout"}
  state = ref.numpy_state(ref.randomize_(_torch_unet(micro, image_size=8), seed=1))
  with caplog.at_level(logging.INFO):
    result = convert.convert_state_dict("sr3", state)
  assert result.preset == "micro" and result.architecture["norm_groups"] == 4
  assert "preset 'micro'" in caplog.text


# ----------------------------------------------------------------------------------------------
# 3. Errors.


def test_missing_and_unknown_keys_are_named_as_in_the_file():
  """A missing tensor and a stray one are reported together with the file's prefixed names;
  schedule buffers are not reported (they are dropped), any other extra key is."""
  _, state = _tiny_file()
  state = dict(state)
  del state["denoise_fn.ups.0.res_block.res_conv.bias"]
  state["denoise_fn.mid.1.attn.qkv.weight"] = np.zeros((64, 32, 1, 1), np.float32)
  state["loss_func.weight"] = np.zeros((3,), np.float32)
  with pytest.raises(ValueError, match=r"does not fit SR3 UNet\(.*\(3 problems") as info:
    convert.convert_state_dict("sr3", state, overrides={"norm_groups": 4})
  message = str(info.value)
  assert "missing key denoise_fn.ups.0.res_block.res_conv.bias (expected shape (32,))" in message
  assert "unknown key denoise_fn.mid.1.attn.qkv.weight (shape (64, 32, 1, 1))" in message
  assert "unknown key loss_func.weight (shape (3,))" in message
  assert "betas" not in message


def test_overrides_that_do_not_fit_name_the_keys():
  """--set attn_levels=[] (any length is accepted for the tuple fields) makes every attention
  tensor unknown; a wrong norm_groups that does not divide the widths says how to fix it."""
  _, state = _tiny_file()
  with pytest.raises(ValueError, match=r"unknown key denoise_fn\.downs\.4\.attn\.qkv\.weight"):
    convert.convert_state_dict("sr3", state, overrides={"norm_groups": 4, "attn_levels": []})
  with pytest.raises(ValueError, match=r"needs norm_groups dividing 16.*--set norm_groups"):
    convert.convert_state_dict("sr3", state)  # Default 32 > inner_channel 16.


def test_wrong_arch_and_duplicate_keys():
  """An SR3 file given --arch rrdbnet is told to use sr3 (with or without the prefix); a file
  holding a tensor with and without the prefix is refused naming both."""
  ref = _ref()
  unet, state = _tiny_file()
  assert convert.detect(state) == convert.detect(ref.numpy_state(unet)) == ["sr3"]
  with pytest.raises(ValueError, match=r"not a RRDBNet checkpoint.*use --arch sr3\."):
    convert.convert_state_dict("rrdbnet", state)
  both = {**state, "downs.0.weight": state["denoise_fn.downs.0.weight"]}
  with pytest.raises(ValueError, match=r"both (denoise_fn\.)?downs\.0\.weight and "
                     r"(denoise_fn\.)?downs\.0\.weight.*remove one"):
    convert.convert_state_dict("sr3", both)


# ----------------------------------------------------------------------------------------------
# 4. The command line.


def test_cli_converts_a_gen_pth(tmp_path, torch):
  """`python -m sr_jax.convert --arch sr3` converts a micro-layout generator .pth (prefix and
  buffers), names the preset, and writes meta.json's architecture and the same tree."""
  ref = _ref()
  micro = {k: v for k, v in registry.entry("sr3").presets["micro"].items() if k != "dropout"}
  unet = ref.randomize_(_torch_unet(micro, image_size=8), seed=2)
  torch.save(ref.Diffusion(unet).state_dict(), tmp_path / "I10_E1_gen.pth")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "sr_jax.convert", "--arch", "sr3", "--src",
                         str(tmp_path / "I10_E1_gen.pth"), "--dst", str(tmp_path / "D")],
                        cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
  assert proc.returncode == 0, proc.stderr
  count = sum(p.numel() for p in unet.parameters())
  assert f"{count:,} parameters, preset 'micro'" in proc.stdout
  params, meta = exports.load_params(str(tmp_path / "D"))
  assert meta["model"] == {"name": "sr3", **{k: list(v) if isinstance(v, tuple) else v
                                             for k, v in micro.items()}}
  want = convert.convert_state_dict("sr3", ref.numpy_state(unet)).params
  got = trees.flatten(params)
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[path]), value, err_msg=path)
