"""Convolution and normalisation layers with interchangeable numerical formulations.

XLA's CPU backend runs some convolutions several times slower than the same arithmetic written
as matrix products or shifted multiply-adds: a depthwise 3x3 through
`lax.conv_general_dilated(feature_group_count=C)` is several times slower than the sum of nine
shifted slices, and a 1x1 conv slower than a matrix product (docs/speed.md has the figures).
On GPU/TPU the plain convolutions are the fast path. Every layer here therefore has an `impl`
field:

  'xla'      lax.conv_general_dilated (the accelerator path);
  'shifted'  the CPU-fast formulation (einsum, shifted sums, space-to-depth + matmul);
  'auto'     'shifted' on the CPU backend, 'xla' elsewhere (see `resolve_impl`).

All formulations compute the same function of the same parameters: the params are always a
`kernel` in HWIO layout (grouped convs use flax's (kh, kw, 1, C) layout) and a `bias`, both
float32 (`param_dtype`), so checkpoints, LoRA targets and converters never see `impl`.
`dtype` is the compute dtype (e.g. bfloat16 for mixed precision).

Initialisation follows PyTorch's `nn.Conv2d` defaults (kernel and bias uniform in
+-1/sqrt(fan_in)), so freshly initialised models behave like the official ones.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
PrecisionLike = Any

IMPLS = ('auto', 'xla', 'shifted')
_DIMS = ('NHWC', 'HWIO', 'NHWC')

# PyTorch's kaiming_uniform_(a=sqrt(5)) equals uniform(+-1/sqrt(fan_in)) = variance_scaling(1/3).
torch_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int) -> Initializer:
  """Returns PyTorch's conv bias init: uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def resolve_impl(impl: str) -> str:
  """Maps 'auto' to the fastest formulation for the default backend ('shifted' on CPU)."""
  if impl not in IMPLS:
    raise ValueError(f'Unknown conv impl {impl!r}; expected one of {IMPLS}.')
  if impl == 'auto':
    return 'shifted' if jax.default_backend() == 'cpu' else 'xla'
  return impl


def pair(value: int | Sequence[int]) -> tuple[int, int]:
  """Normalises an int or a 2-sequence to a pair of ints."""
  if isinstance(value, int):
    return (value, value)
  pair = tuple(int(v) for v in value)
  if len(pair) != 2:
    raise ValueError(f'Expected an int or a pair, got {value!r}.')
  return pair  # type: ignore[return-value]


def _padding(padding: str | int | Sequence[int]) -> str | list[tuple[int, int]]:
  """Converts 'SAME'/'VALID', an int or an (h, w) pair to lax's padding argument."""
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise ValueError(f'Unknown padding {padding!r}.')
    return padding.upper()
  ph, pw = pair(padding)
  return [(ph, ph), (pw, pw)]


def _conv_params(module: nn.Module, kernel_shape: tuple[int, ...], use_bias: bool,
                 fan_in: int) -> tuple[Array, Array | None]:
  """Declares the `kernel` (and optionally `bias`) params of a conv layer."""
  kernel = module.param('kernel', module.kernel_init, kernel_shape, module.param_dtype)
  bias = None
  if use_bias:
    bias_init = module.bias_init or torch_bias_init(fan_in)
    bias = module.param('bias', bias_init, (kernel_shape[-1],), module.param_dtype)
  return kernel, bias


def _add_bias(y: Array, bias: Array | None, dtype: Dtype) -> Array:
  """Adds a per-channel bias (cast to the compute dtype) to an NHWC tensor."""
  if bias is None:
    return y
  return y + jnp.asarray(bias, dtype)


def pixel_matmul(x: Array, matrix: Array, precision: PrecisionLike = None) -> Array:
  """(..., cin) @ (cin, cout) as ONE 2-D matrix product over all pixels.

  Equal to einsum('nhwc,cd->nhwd'), but XLA's CPU backend differentiates the 4-D einsum into
  dot products contracting over three axes at once, which run several times slower than the
  2-D form (docs/speed.md).
  """
  lead = x.shape[:-1]
  y = jnp.matmul(x.reshape(-1, x.shape[-1]), matrix, precision=precision)
  return y.reshape(*lead, matrix.shape[-1])


class Conv1x1(nn.Module):
  """Pointwise (1x1) convolution over NHWC inputs; kernel shape (1, 1, cin, cout).

  'shifted' evaluates it as one 2-D matrix product over the pixels (`pixel_matmul`), several
  times faster than XLA's conv on CPU.
  """
  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  impl: str = 'auto'
  precision: PrecisionLike = None
  kernel_init: Initializer = torch_kernel_init
  bias_init: Initializer | None = None

  def apply_kernel(self, x: Array, kernel: Array) -> Array:
    """The layer's linear map with `kernel` (1, 1, cin, cout) in its place: no bias, no params.

    Also what LoRA's unmerged branch uses to run a low-rank factor as this layer would.
    """
    x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
    if resolve_impl(self.impl) == 'shifted':
      return pixel_matmul(x, kernel[0, 0], self.precision)
    return lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=_DIMS,
                                    precision=self.precision)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the conv to `x` of shape (N, H, W, cin)."""
    cin = x.shape[-1]
    kernel, bias = _conv_params(self, (1, 1, cin, self.features), self.use_bias, cin)
    return _add_bias(self.apply_kernel(x, kernel), bias, self.dtype)


_PAD1 = ((0, 0), (1, 1), (1, 1), (0, 0))


def _shifted_sum(padded: Array, kernel: Array, height: int, width: int) -> Array:
  """Sum over the 3x3 offsets (i, j) of padded[:, i:i+H, j:j+W, :] * kernel[i, j, 0]."""
  out = None
  for i in range(3):
    for j in range(3):
      term = padded[:, i:i + height, j:j + width, :] * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


@jax.custom_vjp
def _depthwise3x3(x: Array, kernel: Array) -> Array:
  """Depthwise 3x3 cross-correlation with zero padding 1, as shifted multiply-adds."""
  return _shifted_sum(jnp.pad(x, _PAD1), kernel, x.shape[1], x.shape[2])


def _depthwise3x3_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
  """Forward pass of the custom VJP: saves only the input and the kernel."""
  return _depthwise3x3(x, kernel), (x, kernel)


def _depthwise3x3_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
  """Hand-written transpose; autodiff's version is ~2-4x slower on CPU (9 padded buffers).

  d/dx is the same shifted sum over the padded cotangent with the flipped kernel. d/dkernel
  pads the cotangent into each offset instead of slicing the input, which XLA fuses with the
  product into a single reduction (slices would be materialised first).
  """
  x, kernel = res
  height, width = x.shape[1], x.shape[2]
  dx = _shifted_sum(jnp.pad(g, _PAD1), kernel[::-1, ::-1], height, width)
  padded = jnp.pad(x, _PAD1)
  dk = [jnp.sum(padded * jnp.pad(g, ((0, 0), (i, 2 - i), (j, 2 - j), (0, 0))), axis=(0, 1, 2))
        for i in range(3) for j in range(3)]
  return dx, jnp.stack(dk).reshape(kernel.shape)


_depthwise3x3.defvjp(_depthwise3x3_fwd, _depthwise3x3_bwd)


def depthwise3x3_shifted(x: Array, kernel: Array) -> Array:
  """Depthwise 3x3 conv (padding 1) as a sum of 9 shifted slices times per-channel weights.

  `x` is (N, H, W, C) and `kernel` (3, 3, 1, C). Products are accumulated in float32 when the
  inputs are a narrower float type, then cast back, matching a conv's internal accumulation.
  The gradient is a custom VJP (reverse mode only: jax.jvp through it is unsupported).
  """
  acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
  out = _depthwise3x3(x.astype(acc_dtype), kernel.astype(acc_dtype))
  return out.astype(x.dtype)


class DepthwiseConv3x3(nn.Module):
  """Depthwise 3x3 convolution with padding 1; kernel shape (3, 3, 1, C).

  'shifted' sums nine shifted slices (~7x faster than XLA's grouped conv on CPU); 'xla' uses
  lax.conv_general_dilated with feature_group_count=C.
  """
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  impl: str = 'auto'
  precision: PrecisionLike = None
  kernel_init: Initializer = torch_kernel_init
  bias_init: Initializer | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the conv to `x` of shape (N, H, W, C)."""
    channels = x.shape[-1]
    kernel, bias = _conv_params(self, (3, 3, 1, channels), self.use_bias, 9)
    x = jnp.asarray(x, self.dtype)
    kernel = jnp.asarray(kernel, self.dtype)
    if resolve_impl(self.impl) == 'shifted':
      y = depthwise3x3_shifted(x, kernel)
    else:
      y = lax.conv_general_dilated(x, kernel, (1, 1), [(1, 1), (1, 1)],
                                   dimension_numbers=_DIMS, feature_group_count=channels,
                                   precision=self.precision)
    return _add_bias(y, bias, self.dtype)


def space_to_depth_conv(x: Array, kernel: Array, precision: PrecisionLike = None) -> Array:
  """A kxk conv with stride k and no padding, as space-to-depth followed by one matmul.

  Non-overlapping patches make this exact: each output pixel is the dot product of its
  (k*k*cin) patch, flattened in the kernel's (kh, kw, cin) order, with the HWIO kernel.
  Trailing rows/columns that do not fill a patch are dropped, as in a 'VALID' conv.
  """
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  ho, wo = h // kh, w // kw
  x = x[:, :ho * kh, :wo * kw, :].reshape(n, ho, kh, wo, kw, cin)
  patches = x.transpose(0, 1, 3, 2, 4, 5).reshape(n, ho, wo, kh * kw * cin)
  return pixel_matmul(patches, kernel.reshape(kh * kw * cin, cout), precision)


class Conv(nn.Module):
  """Dense 2-D convolution over NHWC inputs; kernel (kh, kw, cin, cout).

  Uses lax.conv_general_dilated (fastest on CPU too for overlapping kernels), except that with
  impl 'shifted' a conv whose kernel size equals its stride and has no padding (e.g. NAFNet's
  2x2 stride-2 down-sampling) runs as space-to-depth + matmul.

  `padding` is 'SAME', 'VALID', an int or an (h, w) pair of symmetric paddings.
  """
  features: int
  kernel_size: int | Sequence[int] = 3
  strides: int | Sequence[int] = 1
  padding: str | int | Sequence[int] = 'SAME'
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  impl: str = 'auto'
  precision: PrecisionLike = None
  kernel_init: Initializer = torch_kernel_init
  bias_init: Initializer | None = None

  def _is_patchify(self) -> bool:
    """True when the conv tiles the input with non-overlapping, unpadded patches."""
    padding = _padding(self.padding)
    unpadded = padding == 'VALID' or padding == [(0, 0), (0, 0)]
    return unpadded and pair(self.kernel_size) == pair(self.strides)

  def apply_kernel(self, x: Array, kernel: Array) -> Array:
    """The layer's convolution (strides, padding, formulation) with `kernel` (kh, kw, cin, c)
    in its place, for any c: no bias, no params. Also LoRA's unmerged branch."""
    x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
    if resolve_impl(self.impl) == 'shifted' and self._is_patchify():
      return space_to_depth_conv(x, kernel, self.precision)
    return lax.conv_general_dilated(x, kernel, pair(self.strides), _padding(self.padding),
                                    dimension_numbers=_DIMS, precision=self.precision)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the conv to `x` of shape (N, H, W, cin)."""
    kh, kw = pair(self.kernel_size)
    cin = x.shape[-1]
    kernel, bias = _conv_params(self, (kh, kw, cin, self.features), self.use_bias,
                                kh * kw * cin)
    return _add_bias(self.apply_kernel(x, kernel), bias, self.dtype)


class LayerNorm2d(nn.Module):
  """LayerNorm over the channels of each pixel (NHWC last axis), as NAFNet's LayerNorm2d.

  Params `scale` and `bias` have shape (C,). Mean and (biased) variance are computed in
  float32 whatever the compute dtype, since bfloat16 statistics are too coarse.
  """
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Normalises `x` of shape (N, H, W, C) per pixel."""
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (channels,), self.param_dtype)
    x32 = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centred = x32 - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * lax.rsqrt(var + self.eps)
    y = y * jnp.asarray(scale, jnp.float32) + jnp.asarray(bias, jnp.float32)
    return y.astype(self.dtype)


def pixel_shuffle(x: Array, r: int) -> Array:
  """PyTorch's PixelShuffle(r) for NHWC: (N, H, W, C*r*r) -> (N, H*r, W*r, C).

  Output channel c at sub-position (i, j) reads input channel c*r*r + i*r + j, so weights
  converted from PyTorch keep their meaning.
  """
  n, h, w, crr = x.shape
  if crr % (r * r):
    raise ValueError(f'Channels {crr} not divisible by r*r = {r * r}.')
  c = crr // (r * r)
  x = x.reshape(n, h, w, c, r, r).transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(n, h * r, w * r, c)


def pixel_unshuffle(x: Array, r: int) -> Array:
  """PyTorch's PixelUnshuffle(r) for NHWC: (N, H*r, W*r, C) -> (N, H, W, C*r*r).

  The exact inverse of `pixel_shuffle`.
  """
  n, hr, wr, c = x.shape
  if hr % r or wr % r:
    raise ValueError(f'Spatial size {(hr, wr)} not divisible by {r}.')
  x = x.reshape(n, hr // r, r, wr // r, r, c).transpose(0, 1, 3, 5, 2, 4)
  return x.reshape(n, hr // r, wr // r, c * r * r)


def _linear_taps(size: int, factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lower index, upper index, upper weight) per output sample of an align_corners=False
  linear upsampling, as PyTorch computes them: source = (out + 0.5) / factor - 0.5, clamped
  at 0, and the upper neighbour clamped to the last sample."""
  src = (np.arange(size * factor, dtype=np.float64) + 0.5) / factor - 0.5
  src = np.maximum(src, 0.0)
  lower = np.floor(src).astype(np.int32)
  upper = np.minimum(lower + 1, size - 1)
  return lower, upper, (src - lower).astype(np.float32)


def bilinear_upsample(x: Array, factor: int) -> Array:
  """Upsamples NHWC by an integer factor as F.interpolate(mode='bilinear', align_corners=False).

  Written as gathers and lerps, not a resampling matrix: exact in float32 on every backend
  whatever the matmul precision, and O(n) where jax.image.resize multiplies by dense (out, in)
  weight matrices (it gives the same values). MSRResNet's global residual and the U-Net
  discriminator's x2 decoder use it.
  """
  for axis in (1, 2):
    lower, upper, weight = _linear_taps(x.shape[axis], factor)
    shape = [1] * x.ndim
    shape[axis] = weight.size
    weight = jnp.asarray(weight.reshape(shape), x.dtype)
    x = jnp.take(x, lower, axis=axis) * (1 - weight) + jnp.take(x, upper, axis=axis) * weight
  return x
