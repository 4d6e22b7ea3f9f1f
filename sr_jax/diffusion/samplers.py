"""Samplers for SR3: ancestral DDPM over the full or a shortened chain, and DDIM with eta.

A sampler walks a descending sequence of timesteps T = t_1 > ... > t_n = 1 and maps y at t to
y at the next entry s (0 after the last) using the network's noise estimate eps_hat:

  x0_hat = (y_t - sqrt(1 - g_t) eps_hat) / sqrt(g_t), clipped to [-1, 1] if clip_x0;
  DDPM:  the Gaussian posterior q(y_s | y_t, x0_hat) of the (possibly shortened) chain;
  DDIM:  y_s = sqrt(g_s) x0_hat + sqrt(1 - g_s - sigma^2) eps_hat + sigma z, with
         sigma = eta sqrt((1 - g_s) / (1 - g_t)) sqrt(1 - g_t / g_s).

Both are a linear combination of x0_hat, y_t, eps_hat and fresh noise z, so the per-step
coefficients are computed once on the host in float64 (near the data end 1 - g is ~1e-6, which
float32 cannot resolve from g) and the chain itself is one `lax.scan`. Long chains (DDPM over
SR3's 2000 steps) can run as a host loop over jitted chunks to report progress.

Random numbers come from `fold_in(rng, 0)` (the initial noise) and `fold_in(rng, t)` (the noise
of the step leaving timestep t), so a sample depends on the rng and the chain only, never on
chunking.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from sr_jax import sharding
from sr_jax.diffusion.schedule import NoiseSchedule

PyTree = Any
# denoise(params, condition, y_t, noise_level (B,) = sqrt(gamma_t), t (int32 scalar)) -> eps_hat.
Denoiser = Callable[[PyTree, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
Progress = Callable[[int, int], None]
SAMPLERS = ("ddpm", "ddim")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Which sampler, over how many steps (0 = all T), DDIM's eta, and x0 clipping."""
  kind: str = "ddim"
  num_steps: int = 50
  eta: float = 0.0  # DDIM only: 0 is deterministic, 1 gives DDPM-like noise.
  clip_x0: bool = True  # Clip x0_hat to [-1, 1] (the common implementation's clip_denoised).

  def __post_init__(self):
    if self.kind not in SAMPLERS:
      raise ValueError(f"Unknown config.diffusion.sampler {self.kind!r}; choose one of "
                       f"{SAMPLERS}.")
    if int(self.num_steps) != self.num_steps or self.num_steps < 0:
      raise ValueError(f"config.diffusion.sample_steps={self.num_steps} must be an integer >= 0 "
                       "(0 = every step of the schedule).")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"config.diffusion.eta={self.eta} must lie in [0, 1].")


def sampling_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """`num_steps` distinct timesteps from T down to 1, evenly spaced (0 or >= T: all of them).

  Entry i is T - round(i (T - 1) / (n - 1)) in exact integer arithmetic (halves round up);
  the spacing is at least 1, so the entries are distinct without deduplication.
  """
  if num_steps == 0 or num_steps >= num_timesteps:
    return np.arange(num_timesteps, 0, -1, dtype=np.int64)
  if num_steps == 1:
    return np.array([num_timesteps], dtype=np.int64)
  i, span, gaps = np.arange(num_steps, dtype=np.int64), num_timesteps - 1, num_steps - 1
  return num_timesteps - (2 * i * span + gaps) // (2 * gaps)


class StepCoefficients(NamedTuple):
  """One step t -> s: y_s = x0 x0_hat + y_t y_t + eps eps_hat + noise z.

  x0_hat = (y_t - sqrt_one_minus_gamma eps_hat) / sqrt_gamma; sqrt_gamma is also the noise
  level the denoiser sees. Fields are scalars or per-step arrays.
  """
  sqrt_gamma: Any
  sqrt_one_minus_gamma: Any
  x0: Any
  y_t: Any
  eps: Any
  noise: Any


def _xp(*values) -> Any:
  """jax.numpy for traced or device values, else numpy in float64 (host coefficients)."""
  return jnp if any(isinstance(v, jax.Array) for v in values) else np


def _as_float(xp, value):
  return xp.asarray(value, np.float64) if xp is np else jnp.asarray(value, jnp.float32)


def ddpm_coefficients(g_t, g_s) -> StepCoefficients:
  """Ancestral step of the chain whose transition t -> s has alpha g_t / g_s."""
  xp = _xp(g_t, g_s)
  g_t, g_s = _as_float(xp, g_t), _as_float(xp, g_s)
  alpha = g_t / g_s
  beta = xp.maximum(1.0 - alpha, 0.0)
  zeros = xp.zeros_like(g_t)
  return StepCoefficients(
      sqrt_gamma=xp.sqrt(g_t), sqrt_one_minus_gamma=xp.sqrt(1.0 - g_t),
      x0=beta * xp.sqrt(g_s) / (1.0 - g_t), y_t=(1.0 - g_s) * xp.sqrt(alpha) / (1.0 - g_t),
      eps=zeros, noise=xp.sqrt(beta * (1.0 - g_s) / (1.0 - g_t)))


def ddim_coefficients(g_t, g_s, eta) -> StepCoefficients:
  """DDIM step t -> s with stochasticity eta (sigma = 0 at eta = 0)."""
  xp = _xp(g_t, g_s, eta)
  g_t, g_s, eta = _as_float(xp, g_t), _as_float(xp, g_s), _as_float(xp, eta)
  sigma = eta * xp.sqrt((1.0 - g_s) / (1.0 - g_t) * xp.maximum(1.0 - g_t / g_s, 0.0))
  return StepCoefficients(
      sqrt_gamma=xp.sqrt(g_t), sqrt_one_minus_gamma=xp.sqrt(1.0 - g_t),
      x0=xp.sqrt(g_s), y_t=xp.zeros_like(g_t),
      eps=xp.sqrt(xp.maximum(1.0 - g_s - sigma * sigma, 0.0)), noise=sigma)


def apply_step(y_t: jax.Array, eps_hat: jax.Array, coef: StepCoefficients, z: jax.Array,
               clip_x0: bool) -> jax.Array:
  """y_s from y_t (float32). With clip_x0, eps is re-derived from the clipped x0_hat."""
  c = StepCoefficients(*(jnp.asarray(v, jnp.float32) for v in coef))
  y_t, eps_hat = y_t.astype(jnp.float32), eps_hat.astype(jnp.float32)
  x0_hat = (y_t - c.sqrt_one_minus_gamma * eps_hat) / c.sqrt_gamma
  if clip_x0:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    eps_hat = (y_t - c.sqrt_gamma * x0_hat) / c.sqrt_one_minus_gamma
  return c.x0 * x0_hat + c.y_t * y_t + c.eps * eps_hat + c.noise * z


def ddpm_step(y_t: jax.Array, eps_hat: jax.Array, g_t, g_s, z: jax.Array,
              clip_x0: bool = True) -> jax.Array:
  """One ancestral step t -> s; g_s = 1 (s = 0) adds no noise."""
  return apply_step(y_t, eps_hat, ddpm_coefficients(g_t, g_s), z, clip_x0)


def ddim_step(y_t: jax.Array, eps_hat: jax.Array, g_t, g_s, eta, z: jax.Array,
              clip_x0: bool = True) -> jax.Array:
  """One DDIM step t -> s."""
  return apply_step(y_t, eps_hat, ddim_coefficients(g_t, g_s, eta), z, clip_x0)


def step_table(schedule: NoiseSchedule,
               config: SamplerConfig) -> tuple[np.ndarray, StepCoefficients]:
  """The chain's timesteps (int32) and per-step coefficients (float32, from float64)."""
  ts = sampling_timesteps(schedule.num_steps, config.num_steps)
  gammas = schedule.gammas
  g_t, g_s = gammas[ts], gammas[np.append(ts[1:], 0)]
  if config.kind == "ddpm":
    coef = ddpm_coefficients(g_t, g_s)
  else:
    coef = ddim_coefficients(g_t, g_s, config.eta)
  return ts.astype(np.int32), StepCoefficients(*(np.asarray(c, np.float32) for c in coef))


def _run_chain(denoise: Denoiser, clip_x0: bool, params: PyTree, condition: jax.Array,
               y: jax.Array, rng: jax.Array, ts: jax.Array,
               coef: StepCoefficients) -> jax.Array:
  """The steps of (ts, coef) from y, as one scan."""
  def body(y_t, step):
    t, c = step
    level = jnp.broadcast_to(c.sqrt_gamma, y_t.shape[:1])
    eps_hat = denoise(params, condition, y_t, level, t)
    z = jax.random.normal(jax.random.fold_in(rng, t), y_t.shape, jnp.float32)
    return apply_step(y_t, eps_hat, c, z, clip_x0), None

  y, _ = jax.lax.scan(body, y, (ts, coef))
  return y


@functools.lru_cache(maxsize=16)
def _chunk_runner(denoise: Denoiser, clip_x0: bool, mesh: Mesh | None) -> Callable:
  """The jitted chain, compiled once per chunk length (params are arguments, not constants)."""
  run = functools.partial(_run_chain, denoise, clip_x0)
  if mesh is None:
    return jax.jit(run)
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(run, in_shardings=(rep, data, data, rep, rep, rep), out_shardings=data)


def _run_chunked(run: Callable, args: tuple, ts: np.ndarray, coef: StepCoefficients,
                 chunk: int, progress: Progress | None) -> jax.Array:
  """Host loop over chunks of `chunk` steps; `progress(done, total)` after each."""
  params, condition, y, rng = args
  total = len(ts)
  for start in range(0, total, chunk):
    part = slice(start, start + chunk)
    y = run(params, condition, y, rng, ts[part], StepCoefficients(*(c[part] for c in coef)))
    if progress is not None:
      jax.block_until_ready(y)
      progress(min(start + chunk, total), total)
  return y


def _check_mesh_batch(batch: int, mesh: Mesh) -> None:
  n = sharding.batch_devices(mesh)
  if batch % n:
    raise ValueError(f"Sampling a batch of {batch} images on a mesh needs a multiple of its "
                     f"{n} devices.")


def sample(denoise: Denoiser, params: PyTree, condition: jax.Array, schedule: NoiseSchedule,
           config: SamplerConfig, rng: jax.Array, *, out_channels: int = 3,
           mesh: Mesh | None = None, progress: Progress | None = None,
           chunk_size: int = 0) -> jax.Array:
  """y0 (float32, condition.shape[:-1] + (out_channels,)) sampled from y_T ~ N(0, I).

  With progress=None and chunk_size=0 this is pure (one scan): call it inside jax.jit. Else it
  runs a host loop over jitted chunks of `chunk_size` steps (default with progress: 1/20 of
  the chain), calling progress(done, total) after each. `mesh` splits the batch over its devices.
  """
  ts, coef = step_table(schedule, config)
  shape = tuple(condition.shape[:-1]) + (out_channels,)
  y = jax.random.normal(jax.random.fold_in(rng, 0), shape, jnp.float32)
  if mesh is not None:
    _check_mesh_batch(shape[0], mesh)
  if progress is None and chunk_size == 0:
    if mesh is not None:
      data = sharding.batch_sharding(mesh)
      condition = jax.lax.with_sharding_constraint(condition, data)
      y = jax.lax.with_sharding_constraint(y, data)
    return _run_chain(denoise, config.clip_x0, params, condition, y, rng, ts, coef)
  if mesh is not None:
    data, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    condition, y = jax.device_put(condition, data), jax.device_put(y, data)
    params, rng = jax.device_put(params, rep), jax.device_put(rng, rep)
  chunk = chunk_size if chunk_size > 0 else max(1, len(ts) // 20)
  run = _chunk_runner(denoise, bool(config.clip_x0), mesh)
  return _run_chunked(run, (params, condition, y, rng), ts, coef, chunk, progress)


def progress_logger(what: str) -> Progress:
  """A progress callable that logs steps done / total, steps per second and the ETA.

  The rate is measured from the first report on, so the first chunk's compilation does not
  skew it (the first report's rate includes it).
  """
  start = time.perf_counter()
  first: dict[str, tuple[float, int]] = {}

  def log(done: int, total: int) -> None:
    now = time.perf_counter()
    t0, d0 = first.setdefault("report", (now, done))
    rate = (done - d0) / (now - t0) if done > d0 else done / max(now - start, 1e-9)
    eta = (total - done) / rate if rate > 0 else float("inf")
    logging.info("%s: %d/%d steps, %.2f steps/s, ETA %.0f s.", what, done, total, rate, eta)

  return log
