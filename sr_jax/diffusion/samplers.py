"""Samplers for SR3: ancestral DDPM, DDIM with eta, and DPM-Solver++(2M).

A sampler walks a descending sequence of timesteps T = t_1 > ... > t_n = 1 and maps y at t to
y at the next entry s (0 after the last) using the network's noise estimate eps_hat:

  x0_hat = (y_t - sqrt(1 - g_t) eps_hat) / sqrt(g_t), clipped to [-1, 1] if clip_x0;
  DDPM:  the Gaussian posterior q(y_s | y_t, x0_hat) of the (possibly shortened) chain;
  DDIM:  y_s = sqrt(g_s) x0_hat + sqrt(1 - g_s - sigma^2) eps_hat + sigma z, with
         sigma = eta sqrt((1 - g_s) / (1 - g_t)) sqrt(1 - g_t / g_s);
  DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2: multistep, second order, data prediction):
         with alpha = sqrt(g), sigma = sqrt(1 - g), lambda = log(alpha / sigma),
         h = lambda_s - lambda_t and r = h_prev / h (h_prev: the previous step's h),
         y_s = (sigma_s / sigma_t) y_t + alpha_s (1 - exp(-h)) D,
         D = (1 + 1 / (2 r)) x0_hat - 1 / (2 r) x0_prev   (x0_prev: the previous step's x0_hat).
         The first step is first order (D = x0_hat: DDIM with eta 0), and so is the last, which
         lands on sigma = 0 where h is infinite (the reference implementation's
         lower_order_final, which it applies to short chains).

All are a linear combination of x0_hat, y_t, eps_hat, x0_prev and fresh noise z, so the per-step
coefficients are computed once on the host in float64 (near the data end 1 - g is ~1e-6, which
float32 cannot resolve from g) and the chain itself is one `lax.scan` carrying (y, x0_prev).

The timesteps are evenly spaced in t ('uniform') or in lambda ('logsnr'), rounded to the
schedule's integer timesteps: the denoiser is told t as well as the noise level (split sampling
switches networks by t), and its level sqrt(g_t) is then a level of the chain it was trained on.
'auto' (the default) is 'logsnr' for DPM-Solver++(2M) and 'uniform' for DDPM and DDIM. The
multistep update assumes neighbouring steps of similar size in lambda; on SR3's schedule
(beta from 1e-6) uniform t leaves the last step into t = 1 many times longer in lambda than the
one before, where D's extrapolation weight 1 / (2 r) grows with that ratio and amplifies errors.

Random numbers come from `fold_in(rng, 0)` (the initial noise) and `fold_in(rng, t)` (the noise
of the step leaving timestep t), so a sample depends on the rng and the chain only, never on
chunking or on how the batch is split over devices. `run_chain` (jit, mesh, chunks with
progress reports) drives any such scan; sr_jax.diffusion.resshift uses it too.
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

from sr_jax.diffusion.schedule import NoiseSchedule
from sr_jax.util import sharding

PyTree = Any
# denoise(params, condition, y_t, noise_level (B,) = sqrt(gamma_t), t (int32 scalar)) -> eps_hat.
Denoiser = Callable[[PyTree, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
# chain(params, condition, carry, rng, steps) -> carry: a scan over the leading axis of steps.
Chain = Callable[[PyTree, jax.Array, PyTree, jax.Array, PyTree], PyTree]
Progress = Callable[[int, int], None]
SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
SPACINGS = ("auto", "uniform", "logsnr")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Which sampler, over how many steps (0 = all T), DDIM's eta, x0 clipping, step spacing."""
  kind: str = "ddim"
  num_steps: int = 50
  eta: float = 0.0  # DDIM only: 0 is deterministic, 1 gives DDPM-like noise.
  clip_x0: bool = True  # Clip x0_hat to [-1, 1] (the common implementation's clip_denoised).
  spacing: str = "auto"  # Timesteps even in t ('uniform') or lambda ('logsnr'); see the doc.

  def __post_init__(self):
    if self.kind not in SAMPLERS:
      raise ValueError(f"Unknown config.diffusion.sampler {self.kind!r}; choose one of "
                       f"{SAMPLERS}.")
    if int(self.num_steps) != self.num_steps or self.num_steps < 0:
      raise ValueError(f"config.diffusion.sample_steps={self.num_steps} must be an integer >= 0 "
                       "(0 = every step of the schedule).")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"config.diffusion.eta={self.eta} must lie in [0, 1].")
    if self.spacing not in SPACINGS:
      raise ValueError(f"Unknown config.diffusion.spacing {self.spacing!r}; choose one of "
                       f"{SPACINGS}.")


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


def log_snr(gammas: np.ndarray) -> np.ndarray:
  """lambda = log(sqrt(g) / sqrt(1 - g)), DPM-Solver's half log signal-to-noise ratio."""
  gammas = np.asarray(gammas, np.float64)
  return 0.5 * (np.log(gammas) - np.log1p(-gammas))


def logsnr_timesteps(gammas: np.ndarray, num_steps: int) -> np.ndarray:
  """`num_steps` distinct timesteps from T down to 1, as evenly spaced in lambda as integers
  allow (0 or >= T: all of them). `gammas` is the schedule's (T + 1,) table.

  Each lambda target is mapped to the nearest t (linear in lambda between integers); where two
  targets round to one t (near the data end lambda moves fast), neighbours are pushed apart,
  keeping T first and 1 last.
  """
  total = len(gammas) - 1
  if num_steps == 0 or num_steps >= total:
    return np.arange(total, 0, -1, dtype=np.int64)
  if num_steps == 1:
    return np.array([total], dtype=np.int64)
  lam = log_snr(gammas[1:])  # lam[t - 1], decreasing in t.
  targets = np.linspace(lam[-1], lam[0], num_steps)
  ts = np.rint(np.interp(targets, lam[::-1], np.arange(total, 0, -1.0))).astype(np.int64)
  ts[0], ts[-1] = total, 1
  for i in range(num_steps - 2, -1, -1):  # Strictly decreasing, pushing up from t = 1 ...
    ts[i] = max(ts[i], ts[i + 1] + 1)
  for i in range(1, num_steps):  # ... then down from t = T (both bounds always fit).
    ts[i] = min(ts[i], ts[i - 1] - 1)
  return ts


def timesteps(schedule: NoiseSchedule, config: SamplerConfig) -> np.ndarray:
  """The chain's timesteps T .. 1 under the config's spacing ('auto': 'logsnr' for
  DPM-Solver++(2M), else 'uniform')."""
  spacing = config.spacing
  if spacing == "auto":
    spacing = "logsnr" if config.kind == "dpmpp_2m" else "uniform"
  if spacing == "logsnr":
    return logsnr_timesteps(schedule.gammas, config.num_steps)
  return sampling_timesteps(schedule.num_steps, config.num_steps)


class StepCoefficients(NamedTuple):
  """One step t -> s: y_s = x0 x0_hat + y_t y_t + eps eps_hat + noise z + x0_prev x0_prev.

  x0_hat = (y_t - sqrt_one_minus_gamma eps_hat) / sqrt_gamma; sqrt_gamma is also the noise
  level the denoiser sees; x0_prev is the previous step's x0_hat (DPM-Solver++(2M) only).
  Fields are scalars or per-step arrays.
  """
  sqrt_gamma: Any
  sqrt_one_minus_gamma: Any
  x0: Any
  y_t: Any
  eps: Any
  noise: Any
  x0_prev: Any


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
      eps=zeros, noise=xp.sqrt(beta * (1.0 - g_s) / (1.0 - g_t)), x0_prev=zeros)


def ddim_coefficients(g_t, g_s, eta) -> StepCoefficients:
  """DDIM step t -> s with stochasticity eta (sigma = 0 at eta = 0)."""
  xp = _xp(g_t, g_s, eta)
  g_t, g_s, eta = _as_float(xp, g_t), _as_float(xp, g_s), _as_float(xp, eta)
  sigma = eta * xp.sqrt((1.0 - g_s) / (1.0 - g_t) * xp.maximum(1.0 - g_t / g_s, 0.0))
  zeros = xp.zeros_like(g_t)
  return StepCoefficients(
      sqrt_gamma=xp.sqrt(g_t), sqrt_one_minus_gamma=xp.sqrt(1.0 - g_t),
      x0=xp.sqrt(g_s), y_t=zeros,
      eps=xp.sqrt(xp.maximum(1.0 - g_s - sigma * sigma, 0.0)), noise=sigma, x0_prev=zeros)


def dpmpp_2m_coefficients(g_t, g_s, g_prev=None) -> StepCoefficients:
  """DPM-Solver++(2M) step t -> s; g_prev is the gamma of the previous step's timestep.

  First order (DDIM with eta 0) where g_prev is None or NaN (the first step) or g_s = 1 (the
  last step, onto sigma = 0); second order elsewhere, with 1 / (2 r) = h / (2 h_prev).
  """
  xp = _xp(g_t, g_s, g_prev)
  g_t, g_s = _as_float(xp, g_t), _as_float(xp, g_s)
  g_prev = _as_float(xp, np.nan if g_prev is None else g_prev) + xp.zeros_like(g_t)
  second = ~xp.isnan(g_prev) & (g_s < 1.0)
  a_t, a_s, s_t, s_s = xp.sqrt(g_t), xp.sqrt(g_s), xp.sqrt(1.0 - g_t), xp.sqrt(1.0 - g_s)
  decay = 1.0 - (s_s * a_t) / (a_s * s_t)  # 1 - exp(-h)
  lam = lambda g: 0.5 * (xp.log(g) - xp.log1p(-g))
  h = lam(xp.where(second, g_s, 0.5)) - lam(g_t)
  h_prev = xp.where(second, lam(g_t) - lam(xp.where(second, g_prev, 0.5)), 1.0)
  half_inv_r = xp.where(second, h / (2.0 * h_prev), 0.0)
  return StepCoefficients(
      sqrt_gamma=a_t, sqrt_one_minus_gamma=s_t, x0=a_s * decay * (1.0 + half_inv_r),
      y_t=s_s / s_t, eps=xp.zeros_like(g_t), noise=xp.zeros_like(g_t),
      x0_prev=-a_s * decay * half_inv_r)


def _step(y_t: jax.Array, eps_hat: jax.Array, x0_prev: jax.Array | None, coef: StepCoefficients,
          z: jax.Array | None, clip_x0: bool) -> tuple[jax.Array, jax.Array]:
  """(y_s, x0_hat) from y_t in float32. With clip_x0, eps is re-derived from the clipped x0_hat."""
  c = StepCoefficients(*(jnp.asarray(v, jnp.float32) for v in coef))
  y_t, eps_hat = y_t.astype(jnp.float32), eps_hat.astype(jnp.float32)
  x0_hat = (y_t - c.sqrt_one_minus_gamma * eps_hat) / c.sqrt_gamma
  if clip_x0:
    x0_hat = jnp.clip(x0_hat, -1.0, 1.0)
    eps_hat = (y_t - c.sqrt_gamma * x0_hat) / c.sqrt_one_minus_gamma
  y_s = c.x0 * x0_hat + c.y_t * y_t + c.eps * eps_hat
  if z is not None:
    y_s = y_s + c.noise * z
  if x0_prev is not None:
    y_s = y_s + c.x0_prev * x0_prev
  return y_s, x0_hat


def apply_step(y_t: jax.Array, eps_hat: jax.Array, coef: StepCoefficients, z: jax.Array,
               clip_x0: bool) -> jax.Array:
  """y_s from y_t (float32) for a step that needs no previous x0_hat (DDPM, DDIM)."""
  return _step(y_t, eps_hat, None, coef, z, clip_x0)[0]


def ddpm_step(y_t: jax.Array, eps_hat: jax.Array, g_t, g_s, z: jax.Array,
              clip_x0: bool = True) -> jax.Array:
  """One ancestral step t -> s; g_s = 1 (s = 0) adds no noise."""
  return apply_step(y_t, eps_hat, ddpm_coefficients(g_t, g_s), z, clip_x0)


def ddim_step(y_t: jax.Array, eps_hat: jax.Array, g_t, g_s, eta, z: jax.Array,
              clip_x0: bool = True) -> jax.Array:
  """One DDIM step t -> s."""
  return apply_step(y_t, eps_hat, ddim_coefficients(g_t, g_s, eta), z, clip_x0)


def dpmpp_2m_step(y_t: jax.Array, eps_hat: jax.Array, x0_prev: jax.Array | None, g_t, g_s,
                  g_prev=None, clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
  """One DPM-Solver++(2M) step t -> s: (y_s, x0_hat); x0_hat is the next step's x0_prev.

  x0_prev and g_prev are the previous step's x0_hat and gamma (None on the first step).
  """
  coef = dpmpp_2m_coefficients(g_t, g_s, g_prev)
  return _step(y_t, eps_hat, x0_prev, coef, None, clip_x0)


def step_table(schedule: NoiseSchedule,
               config: SamplerConfig) -> tuple[np.ndarray, StepCoefficients]:
  """The chain's timesteps (int32) and per-step coefficients (float32, from float64)."""
  ts = timesteps(schedule, config)
  gammas = schedule.gammas
  g_t, g_s = gammas[ts], gammas[np.append(ts[1:], 0)]
  if config.kind == "ddpm":
    coef = ddpm_coefficients(g_t, g_s)
  elif config.kind == "ddim":
    coef = ddim_coefficients(g_t, g_s, config.eta)
  else:
    coef = dpmpp_2m_coefficients(g_t, g_s, np.append(np.nan, g_t[:-1]))
  return ts.astype(np.int32), StepCoefficients(*(np.asarray(c, np.float32) for c in coef))


# ----------------------------------------------------------------------------------------------
# The chain driver: one scan, or chunks of it with progress reports, optionally on a mesh.


def _check_mesh_batch(batch: int, mesh: Mesh) -> None:
  n = sharding.batch_devices(mesh)
  if batch % n:
    raise ValueError(f"Sampling a batch of {batch} images on a mesh needs a multiple of its "
                     f"{n} devices.")


@functools.lru_cache(maxsize=16)
def _chunk_runner(chain: Chain, mesh: Mesh | None) -> Callable:
  """The jitted chain, compiled once per chunk length (params are arguments, not constants)."""
  if mesh is None:
    return jax.jit(chain)
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  return jax.jit(chain, in_shardings=(rep, data, data, rep, rep), out_shardings=data)


def run_chain(chain: Chain, params: PyTree, condition: jax.Array, carry: PyTree, rng: jax.Array,
              steps: PyTree, *, mesh: Mesh | None = None, progress: Progress | None = None,
              chunk_size: int = 0) -> PyTree:
  """`chain(params, condition, carry, rng, steps)`, a scan over the leading axis of `steps`.

  With progress=None and chunk_size=0 this calls the chain directly (pure: call it inside
  jax.jit). Else it runs a host loop over jitted chunks of `chunk_size` steps (default with
  progress: 1/20 of the chain), calling progress(done, total) after each; `chain` must then
  hash by value across calls (a module-level function or a cached partial) so each chunk
  length compiles once. `mesh` splits the batch (condition and every carry leaf) over its
  devices; params and rng are replicated.
  """
  total = len(jax.tree.leaves(steps)[0])
  if mesh is not None:
    _check_mesh_batch(condition.shape[0], mesh)
  if progress is None and chunk_size == 0:
    if mesh is not None:
      condition, carry = jax.lax.with_sharding_constraint((condition, carry),
                                                          sharding.batch_sharding(mesh))
    return chain(params, condition, carry, rng, steps)
  if mesh is not None:
    data, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    condition, carry = jax.device_put((condition, carry), data)
    params, rng = jax.device_put((params, rng), rep)
  chunk = chunk_size if chunk_size > 0 else max(1, total // 20)
  run = _chunk_runner(chain, mesh)
  for start in range(0, total, chunk):
    part = slice(start, start + chunk)
    carry = run(params, condition, carry, rng, jax.tree.map(lambda a, p=part: a[p], steps))
    if progress is not None:
      jax.block_until_ready(carry)
      progress(min(start + chunk, total), total)
  return carry


def _sr3_chain_body(denoise: Denoiser, clip_x0: bool, noisy: bool, params: PyTree,
                    condition: jax.Array, carry: tuple[jax.Array, jax.Array], rng: jax.Array,
                    steps: tuple[jax.Array, StepCoefficients]) -> tuple[jax.Array, jax.Array]:
  """The steps (ts, coef) from carry (y, x0_prev), as one scan."""
  def body(state, step):
    y_t, x0_prev = state
    t, c = step
    level = jnp.broadcast_to(c.sqrt_gamma, y_t.shape[:1])
    eps_hat = denoise(params, condition, y_t, level, t)
    z = jax.random.normal(jax.random.fold_in(rng, t), y_t.shape, jnp.float32) if noisy else None
    return _step(y_t, eps_hat, x0_prev, c, z, clip_x0), None

  carry, _ = jax.lax.scan(body, carry, steps)
  return carry


@functools.lru_cache(maxsize=32)
def _sr3_chain(denoise: Denoiser, clip_x0: bool, noisy: bool) -> Chain:
  """One chain object per (denoiser, clipping, noise) so compiled chunks are reused."""
  return functools.partial(_sr3_chain_body, denoise, clip_x0, noisy)


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
  if mesh is not None:
    _check_mesh_batch(shape[0], mesh)
  y = jax.random.normal(jax.random.fold_in(rng, 0), shape, jnp.float32)
  chain = _sr3_chain(denoise, bool(config.clip_x0), bool(np.any(coef.noise != 0)))
  y, _ = run_chain(chain, params, condition, (y, jnp.zeros_like(y)), rng, (ts, coef),
                   mesh=mesh, progress=progress, chunk_size=chunk_size)
  return y


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
