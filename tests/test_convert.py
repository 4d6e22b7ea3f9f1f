"""Conversion of official PyTorch checkpoints (`python -m sr_jax.convert`).

The converted Flax models must compute what the PyTorch reference models (tests/torch_reference.py,
with the official state-dict key names) compute, to 1e-4; reading .pth/.safetensors files must pick
the right weights (EMA first, DataParallel prefixes stripped, .safetensors without PyTorch); the
architecture of every official preset must be read back from its keys and shapes alone; bad input
must fail naming the key and the expected shape without writing anything; the CLI must work end to
end; and `mapping.export` must be the exact inverse of the conversion.

Tests that need PyTorch skip without it. Models are tiny (width/dim 8) to keep the file fast.
"""

import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from sr_jax import convert
from sr_jax.adapt import adapters
from sr_jax.convert import mapping, state_dict
from sr_jax.models import registry
from sr_jax.util import trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4  # Max abs error between the PyTorch and the converted Flax forward pass.
# Published parameter counts of the official checkpoints.
PUBLISHED = {("nafnet", "sidd_w32"): 29_159_715, ("nafnet", "gopro_w32"): 17_111_907,
             ("nafnet", "sidd_w64"): 115_982_915, ("nafnet", "gopro_w64"): 67_888_835,
             ("restormer", "default"): 26_126_644}
OFFICIAL_PRESETS = [("nafnet", p) for p in ("sidd_w32", "sidd_w64", "gopro_w32", "gopro_w64")] + [
    ("restormer", p) for p in ("default", "real_denoising", "gaussian_gray", "dual_pixel")]
# A NAFNet with an uneven layout: blocks differ per level and between encoder and decoder.
UNEVEN_NAFNET = dict(img_channel=3, width=8, enc_blk_nums=(1, 2), middle_blk_num=1,
                     dec_blk_nums=(2, 1))
MICRO_RESTORMER = dict(dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1,
                       heads=(1, 1, 2, 2), ffn_expansion_factor=2.66, bias=False,
                       LayerNorm_type="WithBias")


pytestmark = pytest.mark.usefixtures("single_threaded_torch")


def _torch_reference():
  """tests/torch_reference.py, or a skip when PyTorch is not installed."""
  pytest.importorskip("torch")
  import torch_reference  # pylint: disable=g-import-not-at-top
  return torch_reference


def _numpy_state(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _flax_fields(torch_kwargs: dict) -> dict:
  """The Flax field names of the reference constructor's kwargs (LayerNorm_type differs)."""
  return {("layernorm_type" if k == "LayerNorm_type" else k): v for k, v in torch_kwargs.items()}


def _architecture(name: str, preset: str, **fields) -> dict:
  """The JSON architecture of a registry preset with field overrides."""
  return registry.module_architecture(name, registry.entry(name).build(preset, **fields))


@functools.lru_cache(maxsize=None)
def _preset_shapes(name: str, preset: str) -> dict:
  """Flax parameter shapes of a preset (traced abstractly; cached, big presets take ~1 s)."""
  return adapters.architecture_shapes(_architecture(name, preset))


def _official_layout(name: str, shapes: dict, values=None) -> dict:
  """An official-key state dict for Flax `shapes`: zero-stride views (nothing allocated), or
  `values` {flax path: array} exported to the PyTorch layout."""
  module = convert.converter(name)
  if values is not None:
    return mapping.export(values, module.RULES, module.BROADCAST)
  return {mapping.torch_key(p, module.RULES):
          np.broadcast_to(np.float32(0), mapping.torch_shape(p, s, module.BROADCAST))
          for p, s in shapes.items()}


def _random_checkpoint(name: str, preset: str = "micro", seed: int = 0, **fields):
  """(flat Flax tree of random values, the same weights as an official state dict), no torch."""
  shapes = adapters.architecture_shapes(_architecture(name, preset, **fields))
  rng = np.random.default_rng(seed)
  flat = {p: rng.standard_normal(s).astype(np.float32) for p, s in shapes.items()}
  return flat, _official_layout(name, shapes, flat)


def _assert_same_tree(got: dict, want: dict) -> None:
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[path]), value, err_msg=path)
    assert np.asarray(got[path]).dtype == np.float32, path


# ----------------------------------------------------------------------------------------------
# 1. Forward equivalence with the PyTorch reference.


def _flax_forward(conversion, x_nchw: np.ndarray, impl: str) -> np.ndarray:
  """The converted model's output on an NCHW input, as NCHW."""
  model = adapters.model_from_architecture(conversion.architecture, impl=impl)
  params = jax.tree.map(jnp.asarray, trees.unflatten(conversion.params))
  y = jax.jit(model.apply)({"params": params}, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
  return np.asarray(y).transpose(0, 3, 1, 2)


def _check_equivalence(torch_model, arch: str, expected_fields: dict, x: np.ndarray,
                       impl: str, forward) -> None:
  """Converts the reference's weights and compares the architecture, count and forward pass."""
  import torch  # pylint: disable=g-import-not-at-top
  state = _numpy_state(torch_model)
  conversion = convert.convert_state_dict(arch, state)
  # Everything about the architecture came from the keys and shapes.
  expected = {"name": arch, **{k: list(v) if isinstance(v, tuple) else v
                               for k, v in expected_fields.items()}}
  assert conversion.architecture == expected
  assert conversion.num_params == sum(p.numel() for p in torch_model.parameters())
  with torch.no_grad():
    want = forward(torch_model, torch.from_numpy(x)).numpy()
  got = _flax_forward(conversion, x, impl)
  assert got.shape == want.shape == (x.shape[0], want.shape[1]) + x.shape[2:]
  assert np.abs(want - x[:, :want.shape[1]]).max() > 0.5  # The random weights do matter.
  np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("impl", ["xla", "shifted"])
def test_nafnet_uneven_layout_matches_torch_at_unpadded_size(impl):
  """An uneven NAFNet (enc [1, 2], dec [2, 1]) converts exactly: its layout is inferred and a
  23x30 input (zero-padded to multiples of 4 inside) gives PyTorch's output to 1e-4."""
  ref = _torch_reference()
  model = ref.randomize_(ref.NAFNet(**UNEVEN_NAFNET), seed=1).eval()
  x = np.random.default_rng(0).standard_normal((2, 3, 23, 30)).astype(np.float32)
  _check_equivalence(model, "nafnet", UNEVEN_NAFNET, x, impl, lambda m, t: m(t))


RESTORMER_CASES = {
    # Official default layout type: WithBias norms, no conv biases.
    "withbias": dict(MICRO_RESTORMER, heads=(1, 2, 2, 4)),
    # BiasFree norms with conv biases (output.bias present), 2 heads at level 1, two refinement
    # blocks and a non-official ffn factor the converter must read from the hidden widths.
    "biasfree_bias": dict(MICRO_RESTORMER, heads=(2, 2, 4, 4), num_refinement_blocks=2,
                          ffn_expansion_factor=1.5, bias=True, LayerNorm_type="BiasFree"),
    # Dual-pixel defocus deblurring: 6 input channels, 3 output channels and a skip conv.
    "dual_pixel": dict(MICRO_RESTORMER, heads=(1, 2, 2, 4), inp_channels=6, out_channels=3,
                       dual_pixel_task=True),
}


@pytest.mark.parametrize("case,impl", [("withbias", "xla"), ("withbias", "shifted"),
                                       ("biasfree_bias", "xla"), ("dual_pixel", "xla")])
def test_restormer_matches_torch_reflect_padded_forward(case, impl):
  """Restormer variants convert exactly: a 21x27 input (reflect-padded to multiples of 8 inside,
  as the official test scripts do) gives restormer_pad_forward's output to 1e-4."""
  ref = _torch_reference()
  kwargs = RESTORMER_CASES[case]
  model = ref.randomize_(ref.Restormer(**kwargs), seed=2).eval()
  channels = kwargs.get("inp_channels", 3)
  x = np.random.default_rng(0).standard_normal((2, channels, 21, 27)).astype(np.float32)
  fields = {"inp_channels": 3, "out_channels": 3, "dual_pixel_task": False,
            **_flax_fields(kwargs)}
  _check_equivalence(model, "restormer", fields, x, impl, ref.restormer_pad_forward)


# ----------------------------------------------------------------------------------------------
# 2. Reading real files.


def test_pth_picks_ema_weights_by_default_and_key_selects_others(tmp_path):
  """A BasicSR-style .pth with 'params' and 'params_ema' converts the EMA weights by default;
  key='params' takes the others; the written directory loads back with those exact values."""
  torch = pytest.importorskip("torch")
  ref = _torch_reference()
  fields = dict(UNEVEN_NAFNET)
  plain = _numpy_state(ref.randomize_(ref.NAFNet(**fields), seed=3))
  ema = _numpy_state(ref.randomize_(ref.NAFNet(**fields), seed=4))
  src = tmp_path / "net_g.pth"
  torch.save({"params": {k: torch.from_numpy(v) for k, v in plain.items()},
              "params_ema": {k: torch.from_numpy(v) for k, v in ema.items()}}, src)
  want_ema = convert.convert_state_dict("nafnet", ema).params
  want_plain = convert.convert_state_dict("nafnet", plain).params

  result = convert.convert_file("nafnet", src, tmp_path / "ema")
  _assert_same_tree(result.params, want_ema)
  params, meta = adapters.load_base(tmp_path / "ema")
  _assert_same_tree(trees.flatten(params), want_ema)
  assert meta["source_key"] == "params_ema" and meta["source"] == str(src)
  assert meta["model"] == result.architecture and meta["num_params"] == result.num_params

  result = convert.convert_file("nafnet", src, tmp_path / "plain", key="params")
  _assert_same_tree(result.params, want_plain)


def test_pth_strips_dataparallel_prefix(tmp_path):
  """'module.'-prefixed keys (DataParallel) under 'state_dict' read as the plain state dict."""
  torch = pytest.importorskip("torch")
  ref = _torch_reference()
  model = ref.randomize_(ref.NAFNet(**UNEVEN_NAFNET), seed=5)
  src = tmp_path / "dp.pt"
  torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
              "iter": torch.tensor(7)}, src)
  state, key = state_dict.read(src)
  assert key == "state_dict"
  want = _numpy_state(model)
  assert sorted(state) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(state[k], v, err_msg=k)
  assert convert.convert_state_dict("nafnet", state).architecture["enc_blk_nums"] == [1, 2]


def test_safetensors_converts_without_torch(tmp_path, monkeypatch):
  """With PyTorch unimportable, a .safetensors file still converts and the written directory
  loads with adapters.load_base to exactly the weights; a .pth then fails asking for torch."""
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError.
  flat, state = _random_checkpoint("restormer", "micro", seed=6, bias=True,
                                   layernorm_type="BiasFree")
  src = tmp_path / "model.safetensors"
  save_file(state, str(src))
  result = convert.convert_file("restormer", src, tmp_path / "out")
  assert result.architecture == _architecture("restormer", "micro", bias=True,
                                              layernorm_type="BiasFree")
  params, meta = adapters.load_base(tmp_path / "out")
  _assert_same_tree(trees.flatten(params), flat)
  assert meta["source_key"] == "" and meta["preset"] is None and meta["job"] == "convert"

  (tmp_path / "model.pth").write_bytes(b"anything")
  with pytest.raises(ImportError, match=r"model\.pth needs PyTorch.*pip install torch"):
    convert.convert_file("restormer", tmp_path / "model.pth", tmp_path / "out2")
  assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_safetensors_convert_to_float32(tmp_path, dtype):
  """float16 / bfloat16 weights convert to float32 holding exactly the stored values."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  half = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
  flat, state = _random_checkpoint("nafnet", "micro", seed=10)
  save_file({k: v.astype(half) for k, v in state.items()}, str(tmp_path / "half.safetensors"))
  result = convert.convert_state_dict("nafnet", state_dict.read(tmp_path / "half.safetensors")[0])
  _assert_same_tree(result.params, {p: v.astype(half).astype(np.float32) for p, v in flat.items()})


# ----------------------------------------------------------------------------------------------
# 3. Architecture inference for the official presets.


@pytest.mark.parametrize("name,preset", OFFICIAL_PRESETS)
def test_official_preset_is_inferred_from_keys_and_shapes(name, preset):
  """A state dict with a preset's official keys and shapes (zero-stride, nothing allocated)
  infers exactly that preset's architecture, and its parameter count is the published one."""
  shapes = _preset_shapes(name, preset)
  state = _official_layout(name, shapes)
  fields = convert.converter(name).infer_architecture(state)
  architecture = {"name": name, **{k: list(v) if isinstance(v, tuple) else v
                                   for k, v in fields.items()}}
  assert architecture == _architecture(name, preset)
  assert registry.matching_preset(architecture) == preset
  assert mapping.parameter_count(shapes) == sum(math.prod(v.shape) for v in state.values())
  if (name, preset) in PUBLISHED:
    assert mapping.parameter_count(shapes) == PUBLISHED[(name, preset)]


@pytest.mark.parametrize("name,preset,kwargs", [
    ("nafnet", "sidd_w32", dict(width=32, enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12,
                                dec_blk_nums=(2, 2, 2, 2))),
    ("restormer", "default", {}),
])
def test_official_keys_and_shapes_match_torch_reference(name, preset, kwargs):
  """The PyTorch reference at full size (on the meta device: nothing allocated) has exactly the
  keys and shapes the converter expects for the preset, and the published parameter count."""
  torch = pytest.importorskip("torch")
  ref = _torch_reference()
  with torch.device("meta"):
    model = (ref.NAFNet if name == "nafnet" else ref.Restormer)(**kwargs)
  expected = _official_layout(name, _preset_shapes(name, preset))
  want = {k: tuple(v.shape) for k, v in expected.items()}
  assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == want
  assert sum(p.numel() for p in model.parameters()) == PUBLISHED[(name, preset)]


# ----------------------------------------------------------------------------------------------
# 4. Errors name the key and the expected shape, and nothing is written.


def _assert_fails(exc, pattern, arch, src, dst, **kwargs):
  with pytest.raises(exc, match=pattern) as info:
    convert.convert_file(arch, src, dst, **kwargs)
  assert not os.path.exists(dst), f"{dst} was created by a failed conversion"
  return str(info.value)


def test_key_errors_are_collected_naming_key_and_expected_shape(tmp_path):
  """A missing key, an unknown key and a mis-shaped tensor are all reported in one error, each
  with its key and the shape the architecture expects; no directory is written."""
  _, state = _random_checkpoint("nafnet", "micro")
  del state["ending.bias"]
  state["extra.weight"] = np.zeros((2, 5), np.float32)
  state["encoders.0.0.conv1.weight"] = np.zeros((16, 8, 3, 3), np.float32)
  src = tmp_path / "bad.safetensors"
  save_file(state, str(src))
  message = _assert_fails(ValueError, r"does not fit NAFNet\(.*width=8.*\) \(3 problems; "
                          r"nothing was converted\)", "nafnet", src, tmp_path / "out")
  assert "missing key ending.bias (expected shape (3,))" in message
  assert "unknown key extra.weight (shape (2, 5))" in message
  assert ("encoders.0.0.conv1.weight: checkpoint has shape (16, 8, 3, 3), expected "
          "(16, 8, 1, 1)") in message


def test_wrong_arch_unknown_option_and_contradicting_override(tmp_path):
  """A NAFNet file converted as Restormer suggests --arch nafnet; an unknown --set field is
  refused naming it; an override the file contradicts fails with the shape errors."""
  _, nafnet_state = _random_checkpoint("nafnet", "micro")
  save_file(nafnet_state, str(tmp_path / "nafnet.safetensors"))
  _, restormer_state = _random_checkpoint("restormer", "micro")
  save_file(restormer_state, str(tmp_path / "restormer.safetensors"))
  dst = tmp_path / "out"

  _assert_fails(ValueError, r"no patch_embed\.proj\.weight, so it is not a Restormer .*"
                r"use --arch nafnet\.", "restormer", tmp_path / "nafnet.safetensors", dst)
  _assert_fails(ValueError, r"Unknown restormer option\(s\) \['depth'\]", "restormer",
                tmp_path / "restormer.safetensors", dst, overrides={"depth": 3})
  _assert_fails(ValueError, r"Unknown --preset 'huge'", "restormer",
                tmp_path / "restormer.safetensors", dst, preset="huge")
  message = _assert_fails(ValueError, r"does not fit Restormer\(.*dim=16", "restormer",
                          tmp_path / "restormer.safetensors", dst, overrides={"dim": 16})
  assert "(90 problems; nothing was converted)" in message
  assert ("decoder_level1.0.norm1.body.weight: checkpoint has shape (16,), expected (32,)"
          in message)
  # The override a file agrees with is accepted (and a list becomes the field's tuple).
  result = convert.convert_state_dict("restormer", restormer_state,
                                      overrides={"heads": [1, 1, 2, 2], "dim": 8})
  assert result.preset == "micro"


def test_unreadable_files_fail_naming_the_file(tmp_path):
  """A truncated .safetensors file, a missing file, an unknown suffix and a missing --key entry
  fail with the file's name; nothing is written."""
  _, state = _random_checkpoint("nafnet", "micro")
  good = tmp_path / "good.safetensors"
  save_file(state, str(good))
  data = good.read_bytes()
  dst = tmp_path / "out"

  (tmp_path / "cut.safetensors").write_bytes(data[:len(data) // 2])
  _assert_fails(ValueError, r"Cannot read .*cut\.safetensors as a \.safetensors file", "nafnet",
                tmp_path / "cut.safetensors", dst)
  _assert_fails(FileNotFoundError, r"Checkpoint file .*absent\.pth does not exist", "nafnet",
                tmp_path / "absent.pth", dst)
  (tmp_path / "model.ckpt").write_bytes(data)
  _assert_fails(ValueError, r"model\.ckpt: unknown checkpoint format '\.ckpt'", "nafnet",
                tmp_path / "model.ckpt", dst)
  _assert_fails(ValueError, r"good\.safetensors has no entry 'params'", "nafnet", good, dst,
                key="params")


def test_truncated_pth_fails_naming_the_file(tmp_path):
  """A truncated .pth fails as a ValueError naming the file (torch's own error inside)."""
  torch = pytest.importorskip("torch")
  _, state = _random_checkpoint("nafnet", "micro")
  torch.save({"params": {k: torch.from_numpy(v) for k, v in state.items()}},
             tmp_path / "full.pth")
  data = (tmp_path / "full.pth").read_bytes()
  (tmp_path / "cut.pth").write_bytes(data[:len(data) // 2])
  _assert_fails(ValueError, r"Cannot read .*cut\.pth as a PyTorch checkpoint", "nafnet",
                tmp_path / "cut.pth", tmp_path / "out")


def test_existing_destination_is_kept_unless_overwrite(tmp_path):
  """A non-empty --dst is refused (FileExistsError) and left as it was; an empty one is used;
  --overwrite replaces the parameters."""
  _, state = _random_checkpoint("nafnet", "micro")
  src = tmp_path / "m.safetensors"
  save_file(state, str(src))
  dst = tmp_path / "dst"
  dst.mkdir()
  (dst / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match=r"--dst .*dst already exists.*--overwrite"):
    convert.convert_file("nafnet", src, dst)
  assert os.listdir(dst) == ["keep.txt"] and (dst / "keep.txt").read_text() == "mine"

  (tmp_path / "empty").mkdir()
  assert convert.convert_file("nafnet", src, tmp_path / "empty").preset == "micro"
  flat2, state2 = _random_checkpoint("nafnet", "micro", seed=9)
  save_file(state2, str(src))
  convert.convert_file("nafnet", src, tmp_path / "empty", overwrite=True)
  _assert_same_tree(trees.flatten(adapters.load_base(tmp_path / "empty")[0]), flat2)


# ----------------------------------------------------------------------------------------------
# 5. The command line.


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "sr_jax.convert", *map(str, args)], cwd=REPO,
                        capture_output=True, text=True, timeout=120, env=env)


def test_cli_converts_and_names_the_matching_preset(tmp_path):
  """The CLI converts the reference micro Restormer's weights, reports their parameter count
  and the matching preset with the config flags to use it, and writes a directory that loads.
  (Saved as .safetensors so the subprocess need not import PyTorch.)"""
  ref = _torch_reference()
  model = ref.randomize_(ref.Restormer(**MICRO_RESTORMER), seed=7)
  save_file(_numpy_state(model), str(tmp_path / "micro.safetensors"))
  proc = _cli("--arch", "restormer", "--src", tmp_path / "micro.safetensors", "--dst",
              tmp_path / "out")
  assert proc.returncode == 0, proc.stderr
  assert "208,213 parameters, preset 'micro'" in proc.stdout
  assert (f"--config.model.name=restormer --config.model.preset=micro "
          f"--config.base.checkpoint={tmp_path / 'out'}") in proc.stdout
  params, meta = adapters.load_base(tmp_path / "out")
  assert meta["preset"] == "micro" and meta["source_key"] == ""
  want = convert.convert_state_dict("restormer", _numpy_state(model)).params
  _assert_same_tree(trees.flatten(params), want)


def test_cli_bad_file_exits_2_with_one_error_line(tmp_path):
  """A corrupt checkpoint makes the CLI exit with status 2 and one 'error:' line naming the
  file (no traceback), writing nothing."""
  (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
  proc = _cli("--arch", "nafnet", "--src", tmp_path / "bad.safetensors", "--dst",
              tmp_path / "out")
  assert proc.returncode == 2, proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "bad.safetensors" in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# 6. Export is the inverse of conversion.


@pytest.mark.parametrize("name,fields", [
    ("nafnet", dict(UNEVEN_NAFNET)),
    ("restormer", dict(inp_channels=6, dual_pixel_task=True, bias=True,
                       layernorm_type="BiasFree")),
])
def test_export_then_convert_is_identity(name, fields):
  """mapping.export of the model's initialised tree (the paths, shapes and dtypes model.init
  gives, filled with distinct random values) yields the official layouts, and converting that
  state dict gives back the identical tree."""
  architecture = _architecture(name, "micro", **fields)
  model = adapters.model_from_architecture(architecture)
  channels = 6 if fields.get("dual_pixel_task") else 3
  # jax.eval_shape traces init without compiling it (compiling the RNG takes ~10 s on CPU).
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                             jax.ShapeDtypeStruct((1, 16, 16, channels), jnp.float32))
  rng = np.random.default_rng(8)
  flat = {p: rng.standard_normal(v.shape).astype(v.dtype)
          for p, v in trees.flatten(variables["params"]).items()}
  module = convert.converter(name)
  state = mapping.export(flat, module.RULES, module.BROADCAST)
  if name == "nafnet":  # Spot checks of the official layouts.
    assert state["encoders.1.1.beta"].shape == (1, 16, 1, 1)
    assert state["encoders.0.0.conv2.weight"].shape == (16, 1, 3, 3)
    assert state["ups.0.0.weight"].shape == (64, 32, 1, 1)
    np.testing.assert_array_equal(state["intro.weight"][5, 2, 0, 1],
                                  flat["intro/kernel"][0, 1, 2, 5])
  else:
    assert state["latent.0.attn.temperature"].shape == (2, 1, 1)
    assert state["skip_conv.weight"].shape == (16, 8, 1, 1) and "skip_conv.bias" in state
    assert state["encoder_level1.0.norm1.body.weight"].shape == (8,)
    assert "encoder_level1.0.norm1.body.bias" not in state
  result = convert.convert_state_dict(name, state)
  assert result.architecture == architecture
  _assert_same_tree(result.params, flat)
