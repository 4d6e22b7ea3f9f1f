"""Noise schedules and the continuous noise level of SR3 (Saharia et al. 2021).

Conventions follow the common PyTorch implementation (Image-Super-Resolution-via-Iterative-
Refinement): images in [-1, 1], betas beta_1..beta_T, gamma_t = prod_{i<=t} (1 - beta_i) (the
cumulative alpha) with gamma_0 = 1, and the noisy target y = sqrt(gamma) y0 + sqrt(1 - gamma) eps.
The network sees sqrt(gamma) as its noise level, so it is trained on a continuum of levels and
can be sampled with any sub-sequence of the T steps.

Schedules are built in float64 numpy on the host: gamma is within 1e-6 of 1 at the data end of
SR3's linear schedule, where float32 keeps only one or two significant digits of 1 - gamma.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine", "quad")


def _cosine_betas(num_steps: int, cosine_s: float) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule as the common SR3 implementation writes it."""
  phase = (np.arange(num_steps + 1, dtype=np.float64) / num_steps + cosine_s) / (1 + cosine_s)
  alphas = np.cos(phase * np.pi / 2) ** 2
  alphas = alphas / alphas[0]
  return np.minimum(1 - alphas[1:] / alphas[:-1], 0.999)


def make_betas(kind: str, num_steps: int, start: float, end: float,
               cosine_s: float = 8e-3) -> np.ndarray:
  """beta_1..beta_T (float64) of a 'linear', 'cosine' or 'quad' schedule.

  'linear' spaces beta evenly from `start` to `end`, 'quad' spaces sqrt(beta) evenly; 'cosine'
  ignores `start` and `end`.
  """
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f"config.diffusion.num_timesteps={num_steps} must be an integer >= 1.")
  if kind == "linear":
    betas = np.linspace(start, end, num_steps, dtype=np.float64)
  elif kind == "quad":
    betas = np.linspace(start ** 0.5, end ** 0.5, num_steps, dtype=np.float64) ** 2
  elif kind == "cosine":
    betas = _cosine_betas(num_steps, cosine_s)
  else:
    raise ValueError(f"Unknown config.diffusion.schedule {kind!r}; choose one of {SCHEDULES}.")
  if not np.all((betas > 0) & (betas < 1)):
    raise ValueError(f"config.diffusion.schedule {kind!r} with beta_start={start}, "
                     f"beta_end={end} gives betas outside (0, 1) "
                     f"(min {betas.min():.3g}, max {betas.max():.3g}).")
  return betas


def _read_only(array: np.ndarray) -> np.ndarray:
  array = np.array(array, dtype=np.float64)
  array.flags.writeable = False
  return array


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseSchedule:
  """beta_1..beta_T and the cumulative gammas; hashed by identity so it can be a static arg."""
  betas: np.ndarray

  def __post_init__(self):
    object.__setattr__(self, "betas", _read_only(self.betas))
    if self.betas.ndim != 1 or not np.all((self.betas > 0) & (self.betas < 1)):
      raise ValueError("NoiseSchedule betas must be a 1-D array with values in (0, 1).")

  @classmethod
  def create(cls, kind: str, num_steps: int, start: float, end: float) -> NoiseSchedule:
    return cls(make_betas(kind, num_steps, start, end))

  @property
  def num_steps(self) -> int:
    """T, the length of the full chain."""
    return int(self.betas.shape[0])

  @functools.cached_property
  def gammas(self) -> np.ndarray:
    """float64 (T + 1,): gammas[0] = 1 and gammas[t] = prod_{i<=t} (1 - beta_i)."""
    return _read_only(np.concatenate([[1.0], np.cumprod(1.0 - self.betas)]))


def check_range(schedule: NoiseSchedule, t_min: int, t_max: int) -> tuple[int, int]:
  """(t_min, t_max) with t_max = 0 read as T; requires 1 <= t_min <= t_max <= T."""
  total = schedule.num_steps
  t_max = total if t_max == 0 else t_max
  if int(t_max) != t_max or not 1 <= t_max <= total:
    raise ValueError(f"config.diffusion.t_max={t_max} must be an integer in [1, {total}] "
                     "(0 = the last timestep).")
  if int(t_min) != t_min or not 1 <= t_min <= t_max:
    raise ValueError(f"config.diffusion.t_min={t_min} must be an integer in [1, t_max={t_max}].")
  return int(t_min), int(t_max)


def sample_noise_level(rng: jax.Array, batch: int, schedule: NoiseSchedule, t_min: int = 1,
                       t_max: int = 0) -> tuple[jax.Array, jax.Array]:
  """Per image, t uniform on {t_min..t_max} and gamma uniform on [gamma_t, gamma_{t-1}].

  Returns t (int32, (batch,)) and gamma (float32, (batch,)): the paper's continuous noise
  level. The common PyTorch implementation draws one t per batch and samples sqrt(gamma)
  uniformly between sqrt(gamma_t) and sqrt(gamma_{t-1}); sr_jax draws t per image and gamma
  itself uniformly, as the paper describes. Jittable: `t_min`, `t_max` and `schedule` are
  static, the gamma table becomes a constant.
  """
  t_min, t_max = check_range(schedule, t_min, t_max)
  t_rng, gamma_rng = jax.random.split(rng)
  t = jax.random.randint(t_rng, (batch,), t_min, t_max + 1, dtype=jnp.int32)
  table = jnp.asarray(schedule.gammas, jnp.float32)
  low, high = table[t], table[t - 1]
  u = jax.random.uniform(gamma_rng, (batch,), jnp.float32)
  return t, jnp.clip(low + u * (high - low), low, high)


def _per_image(gamma: jax.Array, like: jax.Array) -> jax.Array:
  """(B,) gamma reshaped to broadcast over the trailing axes of `like`."""
  gamma = jnp.asarray(gamma, jnp.float32)
  return gamma.reshape(gamma.shape + (1,) * (like.ndim - gamma.ndim))


def q_sample(y0: jax.Array, gamma: jax.Array, noise: jax.Array) -> jax.Array:
  """The noisy target sqrt(gamma) y0 + sqrt(1 - gamma) noise, gamma per image (B,)."""
  g = _per_image(gamma, y0)
  return jnp.sqrt(g) * y0 + jnp.sqrt(1.0 - g) * noise


def predict_x0(y_t: jax.Array, gamma: jax.Array, eps: jax.Array) -> jax.Array:
  """The clean image implied by the noise `eps`: inverts q_sample."""
  g = _per_image(gamma, y_t)
  return (y_t - jnp.sqrt(1.0 - g) * eps) / jnp.sqrt(g)


def predict_eps(y_t: jax.Array, gamma: jax.Array, x0: jax.Array) -> jax.Array:
  """The noise implied by the clean image `x0`."""
  g = _per_image(gamma, y_t)
  return (y_t - jnp.sqrt(g) * x0) / jnp.sqrt(1.0 - g)
