"""Residual shifting diffusion for super-resolution (Yue, Wang and Loy 2023, ResShift), in pixels.

ResShift links the HR image x0 and its LR input y (upsampled to the HR size, in [-1, 1]) by a
short Markov chain that shifts the residual e0 = y - x0 while adding noise:

  q(x_t | x_{t-1}, y) = N(x_{t-1} + alpha_t e0, kappa^2 alpha_t I),  alpha_t = eta_t - eta_{t-1},
  q(x_t | x0, y)      = N(x0 + eta_t e0, kappa^2 eta_t I),           t = 1..T, eta_0 = 0,

with eta increasing to eta_T ~ 1, so x_T ~ N(y, kappa^2 eta_T I) needs y alone. The posterior
(the paper's Eq. 7)

  q(x_{t-1} | x_t, x0, y) = N((eta_{t-1} / eta_t) x_t + (alpha_t / eta_t) x0,
                              kappa^2 (eta_{t-1} / eta_t) alpha_t I)

is the reverse step with x0 replaced by a network's prediction f(x_t, y, t), trained by the mean
squared error of that prediction at t uniform on 1..T (the paper drops the ELBO's per-step
weights). At t = 1 the posterior is the point x0 (eta_0 = 0): the last step returns the
predicted x0 with no noise by the formula itself.

The shifting schedule (the paper's Eq. 10): sqrt(eta_t) = sqrt(eta_1) b0^beta_t with
beta_t = ((t - 1) / (T - 1))^p (T - 1) and b0 = exp(log(eta_T / eta_1) / (2 (T - 1))), a
geometric growth of sqrt(eta) in the warped time beta_t that is exact at both ends (p < 1 raises
the noise faster early on). eta_1 = min((0.04 / kappa)^2, 0.001) keeps x_1 close to x0: its
noise std kappa sqrt(eta_1) is at most 0.04 and its shift at most 0.1% of the residual; eta_T
= 0.999. Defaults T = 15, p = 0.3, kappa = 2 are the paper's x4 setting (the public code's
configs set sqrt(eta_T) = 0.99, i.e. eta_T = 0.9801: pass eta_T to match them).

What the network sees (choices of sr_jax, whose SR3 UNet takes condition, noisy, noise_level):
  * the condition y, and x_t scaled by 1 / (1 + 3 kappa sqrt(eta_t)) when normalize_input (the
    public code's pixel-space scaling: keeps the noisy input near [-1, 1], where SR3's are);
  * as its noise level, sqrt(eta_t) ('sqrt_eta', the default): the state's noise std over
    kappa, in (0, 1) like SR3's sqrt(gamma), so a network is tied to the states it saw rather
    than to step indices; or t / T ('timestep'), the paper's timestep input scaled to the
    [0, 1] range the UNet's sinusoidal encoding is made for.

Schedules are float64 numpy on the host, as in sr_jax.diffusion.schedule. The sampler is one
`lax.scan` over float32 step tables, driven by samplers.run_chain (jit, mesh, chunks with
progress reports). Its noise is drawn per image from fold_in(fold_in(rng, first_index + i), t)
(t = 0 for x_T), so an image's sample depends on the rng and its index only: not on the other
images of its batch nor on how the batch is split over devices.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sr_jax.diffusion import samplers

PyTree = Any
# Training: predict(condition y, x_in, level (B,), t (B,) int32) -> x0_hat, for the scaled
# network input x_in and noise level of `network_input`.
X0Predictor = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
# Sampling: the same with the parameters first, so the jitted chain takes them as arguments.
X0Network = Callable[[PyTree, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
LEVELS = ("sqrt_eta", "timestep")


def default_eta_1(kappa: float) -> float:
  """The paper's eta_1 = min((0.04 / kappa)^2, 0.001)."""
  return min((0.04 / kappa) ** 2, 1e-3)


def shift_etas(num_steps: int, kappa: float, power: float, eta_T: float = 0.999,
               eta_1: float | None = None) -> np.ndarray:
  """eta_1..eta_T (float64) of the paper's Eq. 10; eta_1 None = `default_eta_1(kappa)`."""
  if int(num_steps) != num_steps or num_steps < 2:
    raise ValueError(f"ResShift num_steps={num_steps} must be an integer >= 2.")
  if not kappa > 0 or not power > 0:
    raise ValueError(f"ResShift kappa={kappa} and power={power} must be positive.")
  eta_1 = default_eta_1(kappa) if eta_1 is None else eta_1
  if not 0 < eta_1 < eta_T <= 1:
    raise ValueError(f"ResShift needs 0 < eta_1 < eta_T <= 1, got eta_1={eta_1}, "
                     f"eta_T={eta_T}.")
  span = num_steps - 1
  warped = (np.arange(num_steps, dtype=np.float64) / span) ** power * span  # beta_t
  log_b0 = np.log(eta_T / eta_1) / (2 * span)
  return (np.sqrt(eta_1) * np.exp(warped * log_b0)) ** 2


def _read_only(array: np.ndarray) -> np.ndarray:
  array = np.array(array, dtype=np.float64)
  array.flags.writeable = False
  return array


@dataclasses.dataclass(frozen=True, eq=False)
class ShiftSchedule:
  """eta_1..eta_T, kappa and how the network sees the chain; hashed by identity (static arg).

  Tables indexed by t have T + 1 entries; entry 0 (the data end) is defined for completeness.
  """
  etas: np.ndarray
  kappa: float
  normalize_input: bool = True
  level: str = "sqrt_eta"

  def __post_init__(self):
    object.__setattr__(self, "etas", _read_only(self.etas))
    e = self.etas
    if e.ndim != 1 or not np.all((e > 0) & (e <= 1)) or np.any(np.diff(e) <= 0):
      raise ValueError("ShiftSchedule etas must be 1-D, increasing, with values in (0, 1].")
    if not self.kappa > 0:
      raise ValueError(f"ResShift kappa={self.kappa} must be positive.")
    if self.level not in LEVELS:
      raise ValueError(f"Unknown ResShift noise level input {self.level!r}; choose one of "
                       f"{LEVELS}.")

  @classmethod
  def create(cls, num_steps: int = 15, kappa: float = 2.0, power: float = 0.3,
             eta_T: float = 0.999, eta_1: float | None = None, *, normalize_input: bool = True,
             level: str = "sqrt_eta") -> ShiftSchedule:
    return cls(shift_etas(num_steps, kappa, power, eta_T, eta_1), float(kappa),
               normalize_input, level)

  @property
  def num_steps(self) -> int:
    """T, the length of the chain (and the number of sampling steps)."""
    return int(self.etas.shape[0])

  @functools.cached_property
  def eta(self) -> np.ndarray:
    """(T + 1,): eta[0] = 0, eta[t] = eta_t."""
    return _read_only(np.concatenate([[0.0], self.etas]))

  @functools.cached_property
  def alpha(self) -> np.ndarray:
    """(T + 1,): alpha[t] = eta_t - eta_{t-1} (alpha[0] = 0)."""
    return _read_only(np.concatenate([[0.0], np.diff(self.eta)]))

  @functools.cached_property
  def posterior_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x_t coefficient, x0 coefficient, variance) of q(x_{t-1} | x_t, x0, y), each (T + 1,)."""
    eta, alpha = self.eta, self.alpha
    prev = np.concatenate([[0.0], eta[:-1]])
    safe = np.where(eta > 0, eta, 1.0)
    coef_x0 = np.where(eta > 0, alpha / safe, 1.0)
    return (_read_only(prev / safe), _read_only(coef_x0),
            _read_only(self.kappa ** 2 * prev * alpha / safe))

  @functools.cached_property
  def input_scale(self) -> np.ndarray:
    """(T + 1,): the factor on x_t in the network's input."""
    if not self.normalize_input:
      return _read_only(np.ones_like(self.eta))
    return _read_only(1.0 / (1.0 + 3.0 * self.kappa * np.sqrt(self.eta)))

  @functools.cached_property
  def levels(self) -> np.ndarray:
    """(T + 1,): the noise level the network sees at t."""
    if self.level == "timestep":
      return _read_only(np.arange(self.num_steps + 1) / self.num_steps)
    return _read_only(np.sqrt(self.eta))


def _per_image(table: np.ndarray, t: jax.Array, like: jax.Array) -> jax.Array:
  """table[t] (float32) for t (B,) or a scalar, shaped to broadcast over `like`."""
  values = jnp.asarray(table, jnp.float32)[jnp.asarray(t, jnp.int32)]
  return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def _check_pair(x0: jax.Array, y: jax.Array) -> None:
  if x0.ndim != 4 or x0.shape != y.shape:
    raise ValueError(f"ResShift needs the HR image x0 and the upsampled LR image y as NHWC "
                     f"arrays of one shape, got {x0.shape} and {y.shape}; upsample the LR "
                     "image to the HR size.")


def q_sample(schedule: ShiftSchedule, x0: jax.Array, y: jax.Array, t: jax.Array,
             noise: jax.Array) -> jax.Array:
  """x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise, t (B,) in 1..T (float32)."""
  x0, y = x0.astype(jnp.float32), y.astype(jnp.float32)
  eta = _per_image(schedule.eta, t, x0)
  std = _per_image(schedule.kappa * np.sqrt(schedule.eta), t, x0)
  return x0 + eta * (y - x0) + std * noise.astype(jnp.float32)


def posterior(schedule: ShiftSchedule, x_t: jax.Array, x0: jax.Array,
              t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and variance (broadcastable, per image) of q(x_{t-1} | x_t, x0, y), t (B,) in 1..T."""
  coef_xt, coef_x0, variance = schedule.posterior_table
  mean = _per_image(coef_xt, t, x_t) * x_t + _per_image(coef_x0, t, x_t) * x0
  return mean, _per_image(variance, t, x_t)


def network_input(schedule: ShiftSchedule, x_t: jax.Array,
                  t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x_in, level): the scaled noisy image and the (B,) noise level the network sees at t."""
  t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), x_t.shape[:1])
  level = jnp.asarray(schedule.levels, jnp.float32)[t]
  return x_t * _per_image(schedule.input_scale, t, x_t), level


def check_range(schedule: ShiftSchedule, t_min: int, t_max: int) -> tuple[int, int]:
  """(t_min, t_max) with t_max 0 meaning T; an error naming the keys when outside 1..T."""
  last = t_max or schedule.num_steps
  if not 1 <= t_min <= last <= schedule.num_steps:
    raise ValueError(f"config.resshift.t_min={t_min}, t_max={t_max}: need 1 <= t_min <= "
                     f"t_max <= resshift.num_steps={schedule.num_steps} (t_max 0 = the last).")
  return int(t_min), int(last)


def draw_training(schedule: ShiftSchedule, x0: jax.Array, y: jax.Array, rng: jax.Array,
                  t_range: tuple[int, int] = (1, 0)) -> dict[str, jax.Array]:
  """A training step's draws: per image t uniform on t_range (default 1..T; t_max 0 = T),
  the noise, and x_t. A range fine-tunes part of the chain."""
  _check_pair(x0, y)
  t_min, t_max = check_range(schedule, *t_range)
  k_t, k_noise = jax.random.split(rng)
  t = jax.random.randint(k_t, x0.shape[:1], t_min, t_max + 1, dtype=jnp.int32)
  noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
  return {"t": t, "noise": noise, "x_t": q_sample(schedule, x0, y, t, noise)}


def training_loss(predict_x0: X0Predictor, schedule: ShiftSchedule, x0: jax.Array, y: jax.Array,
                  rng: jax.Array, t_range: tuple[int, int] = (1, 0)) -> jax.Array:
  """The mean squared error of predict_x0(y, x_in, level, t) against x0 (float32 scalar).

  x0 is the HR image and y the upsampled LR image, both (B, H, W, C) in [-1, 1]; `rng` draws t
  (on t_range) and the noise (`draw_training`). Differentiable in whatever predict_x0 closes
  over.
  """
  draw = draw_training(schedule, x0, y, rng, t_range)
  x_in, level = network_input(schedule, draw["x_t"], draw["t"])
  x0_hat = predict_x0(y, x_in, level, draw["t"])
  return jnp.mean(jnp.square(x0_hat.astype(jnp.float32) - x0.astype(jnp.float32)))


# ----------------------------------------------------------------------------------------------
# Sampling.


class ShiftStep(NamedTuple):
  """One reverse step t -> t - 1: x_{t-1} = x_t x_t + x0 x0_hat + noise z; the network sees
  (level, x_t * input_scale). Fields are scalars or per-step arrays."""
  level: Any
  input_scale: Any
  x_t: Any
  x0: Any
  noise: Any


def step_table(schedule: ShiftSchedule) -> tuple[np.ndarray, ShiftStep]:
  """Timesteps T..1 (int32) and each step's coefficients (float32, from float64)."""
  ts = np.arange(schedule.num_steps, 0, -1)
  coef_xt, coef_x0, variance = schedule.posterior_table
  table = ShiftStep(schedule.levels[ts], schedule.input_scale[ts], coef_xt[ts], coef_x0[ts],
                    np.sqrt(variance[ts]))
  return ts.astype(np.int32), ShiftStep(*(np.asarray(c, np.float32) for c in table))


def image_keys(rng: jax.Array, batch: int, first_index: int = 0) -> jax.Array:
  """One key per image: fold_in(rng, first_index + i)."""
  index = jnp.arange(batch, dtype=jnp.uint32) + jnp.asarray(first_index, jnp.uint32)
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(index)


def image_noise(keys: jax.Array, t: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard normal noise of `shape`, image i from fold_in(keys[i], t)."""
  draw = lambda key: jax.random.normal(jax.random.fold_in(key, t), shape[1:], jnp.float32)
  return jax.vmap(draw)(keys)


def prior_sample(schedule: ShiftSchedule, y: jax.Array, keys: jax.Array) -> jax.Array:
  """x_T = y + kappa sqrt(eta_T) z, z from the per-image keys at t = 0."""
  std = schedule.kappa * np.sqrt(schedule.etas[-1])
  return y.astype(jnp.float32) + np.float32(std) * image_noise(keys, 0, y.shape)


def reverse_step(x_t: jax.Array, x0_hat: jax.Array, coef: ShiftStep, z: jax.Array,
                 clip_x0: bool = True) -> jax.Array:
  """x_{t-1} from the posterior with x0 replaced by x0_hat (clipped to [-1, 1] if clip_x0)."""
  x0_hat = x0_hat.astype(jnp.float32)
  if clip_x0:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
  c = ShiftStep(*(jnp.asarray(v, jnp.float32) for v in coef))
  return c.x_t * x_t.astype(jnp.float32) + c.x0 * x0_hat + c.noise * z


def _chain_body(predict: X0Network, clip_x0: bool, params: PyTree, y: jax.Array, x: jax.Array,
                keys: jax.Array, steps: tuple[jax.Array, ShiftStep]) -> jax.Array:
  """The reverse steps (ts, coef) from x, as one scan."""
  def body(x_t, step):
    t, c = step
    batch = x_t.shape[:1]
    x0_hat = predict(params, y, x_t * c.input_scale, jnp.broadcast_to(c.level, batch),
                     jnp.broadcast_to(t, batch))
    return reverse_step(x_t, x0_hat, c, image_noise(keys, t, x_t.shape), clip_x0), None

  x, _ = jax.lax.scan(body, x, steps)
  return x


@functools.lru_cache(maxsize=32)
def _chain(predict: X0Network, clip_x0: bool) -> samplers.Chain:
  """One chain object per (network, clipping) so compiled chunks are reused."""
  return functools.partial(_chain_body, predict, clip_x0)


def sample(predict: X0Network, params: PyTree, y: jax.Array, schedule: ShiftSchedule,
           rng: jax.Array, *, clip_x0: bool = True, first_index: int = 0,
           mesh: Mesh | None = None, progress: samplers.Progress | None = None,
           chunk_size: int = 0) -> jax.Array:
  """x0 (float32, y's shape) sampled by the T reverse steps from x_T = y + kappa sqrt(eta_T) z.

  y is the LR image upsampled to the HR size, (B, H, W, C) in [-1, 1]; predict(params, y, x_in,
  level, t) returns the network's x0 for the inputs of `network_input` (t (B,) int32). Image i
  takes its noise from fold_in(rng, first_index + i): sampling a batch in parts with matching
  first_index gives the same images. With progress=None and chunk_size=0 this is pure (one
  scan, call it inside jax.jit); else a host loop over jitted chunks reporting progress(done,
  total); `mesh` splits the batch over its devices (see samplers.run_chain).
  """
  if y.ndim != 4:
    raise ValueError(f"ResShift samples NHWC batches; y has shape {y.shape}.")
  keys = image_keys(rng, y.shape[0], first_index)
  x = prior_sample(schedule, y, keys)
  ts, coef = step_table(schedule)
  return samplers.run_chain(_chain(predict, bool(clip_x0)), params, y.astype(jnp.float32), x,
                            keys, (ts, coef), mesh=mesh, progress=progress,
                            chunk_size=chunk_size)
