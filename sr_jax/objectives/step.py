"""The train state and the jitted, sharded step built from an objective's update.

An objective's update has the signature `update(state, frozen, batch) -> (state, metrics)`;
`frozen` holds the leaves that never change (the frozen half of the parameter tree), passed
separately so that they are neither differentiated, nor donated, nor copied each step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from sr_jax.util import sharding

PyTree = Any
UpdateFn = Callable[[Any, PyTree, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]


@flax.struct.dataclass
class TrainState:
  """What changes during training: the trainable half of the tree and its optimizer state."""
  step: jax.Array
  trainable: PyTree  # {'base': ..., 'lora': ...}; frozen leaves are optax.MaskedNode.
  opt_state: PyTree
  rng: jax.Array  # Raw uint32 key data (checkpointable); objectives that sample split it.
  # Exponential moving average of `trainable` (config.ema.decay > 0), what evaluation and
  # export use; None when off, so the state, its checkpoints and its step are unchanged.
  ema: PyTree = None


def with_ema(state: TrainState) -> TrainState:
  """`state` keeping an EMA of its trainable tree, which starts at the trainable values."""
  return state.replace(ema=jax.tree.map(jnp.copy, state.trainable))


def ema_update(update: UpdateFn, decay: float) -> UpdateFn:
  """`update` followed by ema <- decay * ema + (1 - decay) * trainable (the new values), inside
  the same jitted step: the EMA of weights that SR3 and ResShift evaluate (decay 0.9999 and
  0.999 in their papers; a horizon of about 1 / (1 - decay) steps)."""
  def update_with_ema(state, frozen, batch):
    new, metrics = update(state, frozen, batch)
    ema = jax.tree.map(lambda e, t: decay * e + (1.0 - decay) * t.astype(e.dtype),
                       state.ema, new.trainable)
    return new.replace(ema=ema), metrics
  return update_with_ema


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_steps: int,
                           peak: float | None = None) -> optax.Schedule:
  """Constant, cosine (to end_learning_rate) or multistep, with optional linear warm-up.

  'multistep' multiplies the rate by `gamma` at each of `milestones` (steps), as PyTorch's
  MultiStepLR in the ESRGAN recipe (halved at 50k, 100k, 200k, 300k).
  """
  peak = opt.learning_rate if peak is None else peak
  if opt.schedule == "constant":
    main = optax.constant_schedule(peak)
  elif opt.schedule == "multistep":
    steps = [int(m) - opt.warmup_steps for m in opt.milestones]
    if any(s <= 0 for s in steps) or steps != sorted(set(steps)):
      raise ValueError(f"config optimizer milestones {tuple(opt.milestones)} must be increasing "
                       f"steps after the {opt.warmup_steps} warm-up steps.")
    main = optax.piecewise_constant_schedule(peak, {s: opt.gamma for s in steps})
  elif opt.schedule == "cosine":
    decay = max(num_steps - opt.warmup_steps, 1)
    main = optax.cosine_decay_schedule(peak, decay, alpha=opt.end_learning_rate / peak)
  else:
    raise ValueError(f"Unknown optimizer schedule {opt.schedule!r}; use 'cosine', 'constant' "
                     "or 'multistep'.")
  if opt.warmup_steps:
    warm = optax.linear_schedule(0.0, peak, opt.warmup_steps)
    return optax.join_schedules([warm, main], [opt.warmup_steps])
  return main


STATE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def make_optimizer(opt: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """The optimizer for trainable leaves. Clipping sits here, so it sees only their gradients.

  `opt.state_dtype` 'bfloat16' stores the optimizer's moments in bfloat16 (half the memory of
  the largest part of a full fine-tune's state); the update itself is computed in float32.
  """
  if opt.name == "adamw":
    core = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay)
  elif opt.name == "adam":
    core = optax.adam(schedule, b1=opt.b1, b2=opt.b2)
  else:
    raise ValueError(f"Unknown config.optimizer.name {opt.name!r}; use 'adamw' or 'adam'.")
  state_dtype = opt.get("state_dtype", "float32")
  if state_dtype not in STATE_DTYPES:
    raise ValueError(f"Unknown config optimizer state_dtype {state_dtype!r}; use one of "
                     f"{tuple(STATE_DTYPES)}.")
  if state_dtype != "float32":
    core = stored_as(core, STATE_DTYPES[state_dtype])
  if opt.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), core)
  return core


def _cast_floats(tree: PyTree, dtype) -> PyTree:
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)


def stored_as(inner: optax.GradientTransformation, dtype) -> optax.GradientTransformation:
  """`inner` with its floating-point state kept in `dtype` between steps.

  Each update reads the state back as float32, runs `inner` unchanged and stores the new state
  in `dtype`: only the storage is narrowed, never the arithmetic (optax's own `mu_dtype` covers
  Adam's first moment only).
  """
  def init(params):
    return _cast_floats(inner.init(params), dtype)

  def update(updates, state, params=None):
    updates, state = inner.update(updates, _cast_floats(state, jnp.float32), params)
    return updates, _cast_floats(state, dtype)

  return optax.GradientTransformation(init, update)


def init_state(trainable: PyTree, tx: optax.GradientTransformation, seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                    opt_state=tx.init(trainable), rng=jax.random.PRNGKey(seed))


def build_train_step(update: UpdateFn, mesh: Mesh, *, state_sharding: Any = None,
                     frozen_sharding: Any = None, donate: bool = True) -> Callable:
  """jit `update` with the batch split over the mesh and the state and frozen tree laid out
  as given (one sharding per leaf, `sharding.tree_shardings`; None = replicated).

  The new state keeps the state's layout, so FSDP-split parameters and optimizer moments stay
  split from step to step. The state is donated: its buffers are reused for the new state,
  halving peak parameter memory. Metrics come back replicated (scalars).
  """
  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  state_sharding = rep if state_sharding is None else state_sharding
  frozen_sharding = rep if frozen_sharding is None else frozen_sharding
  return jax.jit(update, in_shardings=(state_sharding, frozen_sharding, data),
                 out_shardings=(state_sharding, rep), donate_argnums=(0,) if donate else ())
