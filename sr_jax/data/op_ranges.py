"""Parameter ranges of the synthetic degradation ops, read and checked from a config.

`OpRanges` holds, for every op, the interval its parameters are drawn from (config key
`data.degradation.*`); `ranges_from_config` converts and validates a config's values, and an
out-of-domain range is an error naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# Field -> (smallest allowed lo, whether lo may equal it, largest allowed hi); None = unbounded.
_RANGE_DOMAINS: dict[str, tuple[float | None, bool, float | None]] = {
    "blur_sigma": (0.0, True, None),
    "motion_length": (0.0, True, None),  # hi <= blur_kernel_size: OpRanges.check_motion_fits.
    "motion_angle": (None, True, None),
    "noise_sigma": (0.0, True, None),
    "poisson_peak": (0.0, False, None),
    "jpeg_quality": (1, True, 100),
    "rain_density": (0.0, True, 1.0),
    "rain_length": (1.0, True, None),
    "rain_angle": (-90.0, True, 90.0),
    "rain_intensity": (0.0, True, 1.0),
    "haze_beta": (0.0, True, None),
    "haze_airlight": (0.0, True, 1.0),
    "lowlight_exposure": (0.0, True, 1.0),
    "lowlight_gamma": (0.0, False, None),
    "lowlight_noise": (0.0, True, None),
}
_PROBABILITIES = ("blur_anisotropic_prob", "noise_gray_prob")


@dataclasses.dataclass(frozen=True)
class OpRanges:
  """Parameter ranges for every op; (lo, hi) tuples are drawn uniformly unless noted.

  A validated, picklable value: build it once when the pipeline is made (`ranges_from_config`)
  so that a bad config fails there, with the config key in the message, not inside a worker.
  """
  blur_sigma: tuple[float, float] = (0.2, 3.0)  # Gaussian blur std in pixels.
  blur_kernel_size: int = 21  # Odd; kernel support of gaussian and motion blur.
  blur_anisotropic_prob: float = 0.0  # Probability that a gaussian blur is anisotropic.
  motion_length: tuple[float, float] = (5.0, 21.0)  # Streak length in pixels.
  motion_angle: tuple[float, float] = (0.0, 180.0)  # Degrees.
  noise_sigma: tuple[float, float] = (1.0, 30.0)  # Gaussian noise std, 0..255 scale.
  noise_gray_prob: float = 0.0  # Probability that the noise is the same in all channels.
  poisson_peak: tuple[float, float] = (30.0, 3000.0)  # Photons at white; drawn log-uniformly.
  jpeg_quality: tuple[int, int] = (30, 95)  # Integer quality, both ends inclusive.
  rain_density: tuple[float, float] = (0.002, 0.01)  # Streak seeds per pixel.
  rain_length: tuple[float, float] = (10.0, 30.0)  # Pixels.
  rain_angle: tuple[float, float] = (-20.0, 20.0)  # Degrees from vertical.
  rain_intensity: tuple[float, float] = (0.4, 0.9)  # Peak brightness added by a streak.
  haze_beta: tuple[float, float] = (0.5, 2.5)  # Transmission t = exp(-beta * depth).
  haze_airlight: tuple[float, float] = (0.7, 1.0)  # Atmospheric light A (grey).
  lowlight_exposure: tuple[float, float] = (0.1, 0.5)  # Multiplicative exposure.
  lowlight_gamma: tuple[float, float] = (1.2, 2.0)  # Applied before exposure: img ** gamma.
  lowlight_noise: tuple[float, float] = (2.0, 10.0)  # Read-noise std after darkening, 0..255.

  def __post_init__(self):
    for name, domain in _RANGE_DOMAINS.items():
      _check_range(name, getattr(self, name), *domain, integer=name == "jpeg_quality")
    for name in _PROBABILITIES:
      value = getattr(self, name)
      if not _is_real(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"degradation.{name} must be a probability in [0, 1], got {value!r}.")
    size = self.blur_kernel_size
    if not _is_int(size) or size < 1 or size % 2 == 0:
      raise ValueError(f"degradation.blur_kernel_size must be an odd positive integer, got "
                       f"{size!r}.")

  def check_motion_fits(self) -> None:
    """Motion streaks must fit the kernel; checked only when motion blur can be drawn."""
    if self.motion_length[1] > self.blur_kernel_size:
      raise ValueError(
          f"degradation.motion_length must be a range (lo, hi) with hi <= "
          f"degradation.blur_kernel_size ({self.blur_kernel_size}), got {self.motion_length}.")


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))


def _check_range(name: str, value: Any, lo_min: float | None, lo_min_allowed: bool,
                 hi_max: float | None, integer: bool = False) -> None:
  """Raises a ValueError naming `degradation.<name>` unless `value` is a valid (lo, hi) range."""
  lower = "" if lo_min is None else f"{lo_min} {'<=' if lo_min_allowed else '<'} "
  upper = "" if hi_max is None else f" <= {hi_max}"
  kind = "integers " if integer else ""
  message = (f"degradation.{name} must be a range (lo, hi) of {kind}with "
             f"{lower}lo <= hi{upper}, got {value!r}.")
  if not isinstance(value, tuple) or len(value) != 2:
    raise ValueError(message)
  lo, hi = value
  if not all(_is_int(v) if integer else _is_real(v) for v in value) or lo > hi:
    raise ValueError(message)
  if lo_min is not None and (lo < lo_min or (lo == lo_min and not lo_min_allowed)):
    raise ValueError(message)
  if hi_max is not None and hi > hi_max:
    raise ValueError(message)


def _convert(name: str, value: Any, default: Any) -> Any:
  """Converts a config value to the type of the field's default (tuples element-wise)."""
  def scalar(v, like):
    if isinstance(like, int):
      if isinstance(v, (float, np.floating)) and not float(v).is_integer():
        raise ValueError(f"degradation.{name} must hold integers, got {value!r}.")
      return int(v)
    return float(v)
  if isinstance(default, tuple):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
      raise ValueError(f"degradation.{name} must be a range (lo, hi), got {value!r}.")
    return tuple(scalar(v, default[0]) for v in value)
  return scalar(value, default)


def ranges_from_config(cfg: Any) -> OpRanges:
  """Builds OpRanges from any object with its attribute names (e.g. `data.degradation`).

  Missing attributes keep the defaults; other attributes (kind, ops, ...) are ignored. Ranges
  become tuples of float (of int for jpeg_quality), so ConfigDict lists or numpy scalars work.
  """
  if isinstance(cfg, OpRanges):
    return cfg
  values = {}
  for field in dataclasses.fields(OpRanges):
    if hasattr(cfg, field.name):
      values[field.name] = _convert(field.name, getattr(cfg, field.name), field.default)
  return OpRanges(**values)

