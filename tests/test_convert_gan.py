"""Conversion of ESRGAN RRDBNet and BasicSR MSRResNet checkpoints (`--arch rrdbnet|srresnet`).

RRDBNet weights circulate in three key layouts (BasicSR, newer xinntao, oldest ESRGAN); the
same tensors in any of them must convert to the identical Flax tree, and the converted models
must compute what the PyTorch references (tests/torch_gan_reference.py) compute, to 1e-4. The
full-size x4 architectures must be read back from keys and shapes alone with the published
parameter counts; bad files must fail naming each key as the file spells it, writing nothing;
the CLI must convert an oldest-layout .pth end to end.

Models are tiny (8-16 features, 1-2 blocks) so the file runs in seconds; PyTorch tests skip
without torch.
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
from sr_jax.convert import mapping, rrdbnet
from sr_jax.models import registry
from sr_jax.util import exports, trees

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4  # Max abs error between the PyTorch and the converted Flax forward pass.
PUBLISHED = {"rrdbnet": 16_697_987, "srresnet": 1_517_571}  # Full-size x4 parameter counts.
TINY_RRDB = dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2, num_grow_ch=4)
TINY_SRRESNET = dict(num_in_ch=3, num_out_ch=3, num_feat=8, num_block=2)


pytestmark = pytest.mark.usefixtures("single_threaded_torch")


def _ref():
  """tests/torch_gan_reference.py, or a skip when PyTorch is not installed."""
  pytest.importorskip("torch")
  import torch_gan_reference  # pylint: disable=g-import-not-at-top
  return torch_gan_reference


def _tiny_rrdbnet(scale: int, seed: int = 0, **fields):
  ref = _ref()
  return ref.randomize_(ref.RRDBNet(**{**TINY_RRDB, "scale": scale, **fields}), seed).eval()


def _assert_same_tree(got: dict, want: dict) -> None:
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(value), err_msg=path)
    assert np.asarray(got[path]).dtype == np.float32, path


def _flax_forward(conversion, x_nchw: np.ndarray) -> np.ndarray:
  """The converted model's output on an NCHW input, as NCHW."""
  model = adapters.model_from_architecture(conversion.architecture, impl="xla")
  params = jax.tree.map(jnp.asarray, trees.unflatten(conversion.params))
  y = jax.jit(model.apply)({"params": params}, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
  return np.asarray(y).transpose(0, 3, 1, 2)


def _check_forward(torch_model, arch: str, fields: dict, hw: tuple[int, int]) -> None:
  """Converts the reference's BasicSR state dict; checks the inferred architecture, the
  parameter count and the forward pass on a (2, C, *hw) input."""
  import torch  # pylint: disable=g-import-not-at-top
  ref = _ref()
  conversion = convert.convert_state_dict(arch, ref.numpy_state(torch_model))
  assert conversion.architecture == {"name": arch, **fields}
  assert conversion.num_params == sum(p.numel() for p in torch_model.parameters())
  x = np.random.default_rng(0).standard_normal((2, fields["num_in_ch"], *hw)).astype(np.float32)
  with torch.no_grad():
    want = torch_model(torch.from_numpy(x)).numpy()
  got = _flax_forward(conversion, x)
  s = fields["scale"]
  assert got.shape == want.shape == (2, fields["num_out_ch"], s * hw[0], s * hw[1])
  assert np.abs(want).max() > 0.3  # Non-trivial outputs, so the tolerance means something.
  np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


# ----------------------------------------------------------------------------------------------
# 1. The three RRDBNet layouts and the forward passes.


@pytest.mark.parametrize("scale", [4, 3])
def test_rrdbnet_layouts_convert_to_identical_trees(scale):
  """The same weights in BasicSR, newer xinntao (x4 only) and oldest ESRGAN names convert to
  bit-identical Flax trees. The renamed dicts load strictly into the reference's xinntao and
  old-code modules (real Sequential numbering) and compute the same outputs, so the layouts
  under test are the real ones."""
  import torch  # pylint: disable=g-import-not-at-top
  ref = _ref()
  model = _tiny_rrdbnet(scale, seed=1)
  basicsr = model.state_dict()
  layouts = {"old": (ref.OldEsrganRRDBNet(**TINY_RRDB, scale=scale),
                     ref.to_old_esrgan_layout(basicsr, TINY_RRDB["num_block"]))}
  if scale == 4:
    layouts["xinntao"] = (ref.EsrganRRDBNet(**TINY_RRDB), ref.to_esrgan_layout(basicsr))
  assert "model.1.sub.2.weight" in layouts["old"][1]  # conv_body follows the 2 RRDBs.
  want = convert.convert_state_dict("rrdbnet", ref.numpy_state(model))
  x = torch.randn(1, 3, 5, 6, generator=torch.Generator().manual_seed(0))
  for name, (module, state) in layouts.items():
    module.load_state_dict(state, strict=True)
    with torch.no_grad():
      torch.testing.assert_close(module(x), model(x), rtol=0, atol=0, msg=name)
    assert rrdbnet.layout(state) == {"old": "oldest ESRGAN", "xinntao": "xinntao ESRGAN"}[name]
    got = convert.convert_state_dict("rrdbnet", ref.numpy_state(module))
    assert got.architecture == want.architecture, name
    _assert_same_tree(got.params, want.params)


@pytest.mark.parametrize("scale,hw", [(4, (7, 9)), (3, (5, 7)), (2, (6, 10)), (1, (8, 12))])
def test_rrdbnet_matches_torch(scale, hw):
  """A converted RRDBNet computes the reference's output to 1e-4 at every scale: x4 and x3 at
  odd sizes, x2 and x1 (BasicSR's pixel-unshuffle by 2 / 4) at sizes they divide; the
  architecture, scale included, is inferred from the shapes."""
  _check_forward(_tiny_rrdbnet(scale, seed=2), "rrdbnet", {**TINY_RRDB, "scale": scale}, hw)


@pytest.mark.parametrize("scale,hw", [(4, (7, 9)), (3, (5, 6)), (2, (6, 5))])
def test_msrresnet_matches_torch(scale, hw):
  """A converted MSRResNet (pixel shuffles, LeakyReLU 0.1, bilinear global residual) computes
  the reference's output to 1e-4, its scale inferred from upconv1 / upconv2."""
  ref = _ref()
  model = ref.randomize_(ref.MSRResNet(**TINY_SRRESNET, upscale=scale), seed=3).eval()
  _check_forward(model, "srresnet", {**TINY_SRRESNET, "scale": scale}, hw)


# ----------------------------------------------------------------------------------------------
# 2. Architecture inference at full size.


@functools.lru_cache(maxsize=None)
def _preset_shapes(arch: str, preset: str) -> dict:
  """Flax parameter shapes of a registry preset (traced abstractly; cached)."""
  module = registry.entry(arch).build(preset)
  return adapters.architecture_shapes(registry.module_architecture(arch, module))


def _meta_state(module) -> dict:
  """Zero-stride numpy arrays with a (meta-device) module's state-dict keys and shapes."""
  return {k: np.broadcast_to(np.float32(0), tuple(v.shape))
          for k, v in module.state_dict().items()}


@pytest.mark.parametrize("arch,scale,layout,preset", [
    ("rrdbnet", 4, "basicsr", "x4"), ("rrdbnet", 4, "xinntao", "x4"),
    ("rrdbnet", 4, "old", "x4"), ("rrdbnet", 2, "basicsr", "x2"),
    ("srresnet", 4, "basicsr", "x4"), ("srresnet", 3, "basicsr", "x3")])
def test_full_size_architecture_is_inferred_from_shapes(arch, scale, layout, preset):
  """Full-size official checkpoints (built on the meta device: nothing allocated) infer the
  registry preset from keys and shapes alone, in every layout; the x4 presets have the
  published parameter counts, and the old layout's 23-block numbering converts completely."""
  torch = pytest.importorskip("torch")
  ref = _ref()
  with torch.device("meta"):
    if arch == "srresnet":
      model = ref.MSRResNet(upscale=scale)
    elif layout == "xinntao":
      model = ref.EsrganRRDBNet()
    elif layout == "old":
      model = ref.OldEsrganRRDBNet()
    else:
      model = ref.RRDBNet(scale=scale)
  state = _meta_state(model)
  fields = convert.converter(arch).infer_architecture(state)
  architecture = {"name": arch, **fields}
  assert architecture == registry.module_architecture(arch, registry.entry(arch).build(preset))
  assert registry.matching_preset(architecture) == preset
  if layout == "old":  # The whole conversion, to check the 23-block numbering end to end.
    assert "model.1.sub.23.weight" in state and "model.10.weight" in state
    result = convert.convert_state_dict(arch, state)
    assert result.preset == "x4" and len(result.params) == len(state)
    count = result.num_params
  else:
    count = mapping.parameter_count(_preset_shapes(arch, preset))
  assert count == sum(math.prod(v.shape) for v in state.values())
  if scale == 4:
    assert count == PUBLISHED[arch]


@pytest.mark.parametrize("in_ch,out_ch,want", [
    (3, 3, (4, 3)), (12, 3, (2, 3)), (48, 3, (1, 3)), (4, 3, (4, 4)), (4, 1, (2, 1))])
def test_rrdbnet_scale_and_input_channels_from_conv_first(in_ch, out_ch, want):
  """With conv_up1 and conv_up2, conv_first's input channels give (scale, num_in_ch): equal to
  num_out_ch -> x4; 4x / 16x -> BasicSR's x2 / x1; anything else -> x4 with that many input
  channels. (4 -> 1 reads as x2 with one input channel: the documented assumption.)"""
  zeros = lambda *s: np.broadcast_to(np.float32(0), s)
  state = {"conv_first.weight": zeros(8, in_ch, 3, 3), "conv_body.weight": zeros(8, 8, 3, 3),
           "conv_up1.weight": zeros(8, 8, 3, 3), "conv_up2.weight": zeros(8, 8, 3, 3),
           "conv_last.weight": zeros(out_ch, 8, 3, 3)}
  fields = rrdbnet.infer_architecture(state)
  assert (fields["scale"], fields["num_in_ch"]) == want
  assert (fields["num_out_ch"], fields["num_feat"], fields["num_block"]) == (out_ch, 8, 0)
  del state["conv_up2.weight"]
  assert rrdbnet.infer_architecture(state)["scale"] == 3


def test_set_overrides_an_ambiguous_reading():
  """A 12-channel-input x4 RRDBNet reads as BasicSR's x2 (the documented assumption); --set
  scale=4 num_in_ch=12 converts it as what it is."""
  ref = _ref()
  model = _tiny_rrdbnet(4, seed=4, num_in_ch=12)
  state = ref.numpy_state(model)
  assert rrdbnet.infer_architecture(state)["scale"] == 2
  result = convert.convert_state_dict("rrdbnet", state,
                                      overrides={"scale": 4, "num_in_ch": 12})
  assert result.architecture["scale"] == 4 and result.inferred["scale"] == 2


# ----------------------------------------------------------------------------------------------
# 3. Errors name the keys as the file spells them; nothing is written.


def _assert_fails(pattern, arch, src, dst, **kwargs) -> str:
  with pytest.raises(ValueError, match=pattern) as info:
    convert.convert_file(arch, src, dst, **kwargs)
  assert not os.path.exists(dst), f"{dst} was created by a failed conversion"
  return str(info.value)


def test_old_layout_key_errors_use_the_files_names(tmp_path):
  """In an oldest-layout file, a missing, an unknown and a mis-shaped tensor are reported
  together under their model.* names with the expected shapes; nothing is written."""
  ref = _ref()
  state = ref.to_old_esrgan_layout(ref.numpy_state(_tiny_rrdbnet(4)), TINY_RRDB["num_block"])
  del state["model.8.bias"]
  state["model.11.weight"] = np.zeros((3, 3), np.float32)
  state["model.1.sub.1.RDB2.conv3.0.weight"] = np.zeros((4, 15, 3, 3), np.float32)
  save_file(state, str(tmp_path / "old.safetensors"))
  message = _assert_fails(r"does not fit RRDBNet\(.*num_feat=8.*\) \(3 problems; nothing was "
                          r"converted\)", "rrdbnet", tmp_path / "old.safetensors",
                          tmp_path / "out")
  assert "missing key model.8.bias (expected shape (8,))" in message
  assert "unknown key model.11.weight (shape (3, 3))" in message
  assert ("model.1.sub.1.RDB2.conv3.0.weight: checkpoint has shape (4, 15, 3, 3), expected "
          "(4, 16, 3, 3)") in message
  assert "conv_hr" not in message and "body." not in message


def test_srresnet_key_errors_and_bad_upconv(tmp_path):
  """A missing and an unknown MSRResNet key are named; an upconv1 whose width fits no scale is
  refused naming its shape."""
  ref = _ref()
  state = ref.numpy_state(ref.randomize_(ref.MSRResNet(**TINY_SRRESNET), seed=5))
  del state["body.1.conv2.bias"]
  state["body.1.conv3.weight"] = np.zeros((8, 8, 3, 3), np.float32)
  save_file(state, str(tmp_path / "m.safetensors"))
  message = _assert_fails(r"does not fit MSRResNet\(.*\(2 problems", "srresnet",
                          tmp_path / "m.safetensors", tmp_path / "out")
  assert "missing key body.1.conv2.bias (expected shape (8,))" in message
  assert "unknown key body.1.conv3.weight (shape (8, 8, 3, 3))" in message

  x2 = ref.numpy_state(ref.MSRResNet(**TINY_SRRESNET, upscale=2))
  x2["upconv1.weight"] = np.zeros((40, 8, 3, 3), np.float32)
  with pytest.raises(ValueError, match=r"upconv1\.weight has shape \(40, 8, 3, 3\).*32 or 72"):
    convert.convert_state_dict("srresnet", x2)


def test_wrong_arch_suggests_the_right_one():
  """An RRDBNet file (any layout) given another --arch, and an MSRResNet given --arch rrdbnet,
  fail saying which keys are lacking and which --arch to use."""
  ref = _ref()
  basicsr = ref.numpy_state(_tiny_rrdbnet(4))
  old = ref.to_old_esrgan_layout(basicsr, TINY_RRDB["num_block"])
  xinntao = ref.to_esrgan_layout(basicsr)
  srresnet = ref.numpy_state(ref.MSRResNet(**TINY_SRRESNET))
  with pytest.raises(ValueError, match=r"no intro\.weight, so it is not a NAFNet checkpoint "
                     r"\(its keys begin model\.0\.bias.*use --arch rrdbnet\."):
    convert.convert_state_dict("nafnet", old)
  with pytest.raises(ValueError, match=r"no upconv1\.weight together with conv_hr\.weight, so "
                     r"it is not a MSRResNet checkpoint.*use --arch rrdbnet\."):
    convert.convert_state_dict("srresnet", xinntao)
  with pytest.raises(ValueError, match=r"no conv_body\.weight, trunk_conv\.weight or "
                     r"model\.1\.sub\.0\.RDB1\.conv1\.0\.weight, so it is not a RRDBNet "
                     r"checkpoint.*use --arch srresnet\."):
    convert.convert_state_dict("rrdbnet", srresnet)
  assert convert.detect(basicsr) == convert.detect(old) == convert.detect(xinntao) == [
      "rrdbnet"]
  assert convert.detect(srresnet) == ["srresnet"]


def test_a_tensor_under_two_layouts_names_is_refused():
  """An old-layout file that also holds a BasicSR-named copy of one tensor is refused naming
  both keys (one would otherwise silently win)."""
  ref = _ref()
  old = ref.to_old_esrgan_layout(ref.numpy_state(_tiny_rrdbnet(4)), TINY_RRDB["num_block"])
  old["conv_first.weight"] = old["model.0.weight"]
  with pytest.raises(ValueError, match=r"oldest ESRGAN layout\) has both (model\.0\.weight and "
                     r"conv_first\.weight|conv_first\.weight and model\.0\.weight).*remove one"):
    convert.convert_state_dict("rrdbnet", old)


# ----------------------------------------------------------------------------------------------
# 4. Real files and the command line.


def test_pth_with_params_and_params_ema_converts_the_ema_weights(tmp_path):
  """A BasicSR .pth holding 'params' and 'params_ema' converts 'params_ema'."""
  torch = pytest.importorskip("torch")
  ref = _ref()
  plain, ema = _tiny_rrdbnet(4, seed=6), _tiny_rrdbnet(4, seed=7)
  torch.save({"params": plain.state_dict(), "params_ema": ema.state_dict()}, tmp_path / "g.pth")
  result = convert.convert_file("rrdbnet", tmp_path / "g.pth", tmp_path / "out")
  _assert_same_tree(result.params,
                    convert.convert_state_dict("rrdbnet", ref.numpy_state(ema)).params)
  assert exports.read_params_meta(str(tmp_path / "out"))["source_key"] == "params_ema"


def test_cli_converts_an_old_layout_pth(tmp_path):
  """`python -m sr_jax.convert --arch rrdbnet` (a subprocess: the module's main()) converts an
  oldest-layout .pth of the 'micro' preset's shape, names the preset, and writes a directory
  that exports.load_params reads back as exactly the BasicSR-layout conversion."""
  torch = pytest.importorskip("torch")
  ref = _ref()
  micro = dict(registry.entry("rrdbnet").presets["micro"])
  model = ref.randomize_(ref.RRDBNet(**micro), seed=8)
  old = ref.to_old_esrgan_layout(model.state_dict(), micro["num_block"])
  torch.save(old, tmp_path / "old.pth")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "sr_jax.convert", "--arch", "rrdbnet", "--src",
                         str(tmp_path / "old.pth"), "--dst", str(tmp_path / "D")], cwd=REPO,
                        capture_output=True, text=True, timeout=120, env=env)
  assert proc.returncode == 0, proc.stderr
  count = sum(p.numel() for p in model.parameters())
  assert f"{count:,} parameters, preset 'micro'" in proc.stdout
  params, meta = exports.load_params(str(tmp_path / "D"))
  assert meta["model"] == {"name": "rrdbnet", **micro} and meta["source_key"] == ""
  want = convert.convert_state_dict("rrdbnet", ref.numpy_state(model)).params
  _assert_same_tree(trees.flatten(params), want)
