"""The pieces of scale-out: the FSDP layout rule, the mesh, optimizer state stored in bfloat16,
the distributed flags, and run directories given as URLs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sr_jax.config import config_base
from sr_jax.objectives import step as step_lib
from sr_jax.util import distributed, paths, sharding

P = sharding.P


@pytest.mark.parametrize("shape,fsdp,min_size,spec", [
    ((3, 3, 64, 128), 8, 1, P(None, None, None, "fsdp")),  # Output channels: the largest.
    ((3, 3, 128, 64), 8, 1, P(None, None, "fsdp")),  # Input channels, when larger.
    ((1, 1, 64, 64), 4, 1, P(None, None, None, "fsdp")),  # Ties go to the last dimension.
    ((3, 3, 3, 64), 8, 1, P(None, None, None, "fsdp")),
    ((3, 3, 64, 3), 8, 1, P(None, None, "fsdp")),  # 3 output channels cannot be split.
    ((3, 3, 5, 7), 2, 1, P()),  # Nothing divisible: replicated.
    ((64,), 8, 1, P("fsdp")),
    ((64,), 8, 65, P()),  # Below the size threshold: replicated.
    ((3, 3, 64, 128), 1, 1, P()),  # No fsdp axis: replicated.
    ((), 8, 1, P()),
])
def test_leaf_spec_rule(shape, fsdp, min_size, spec):
  assert sharding.leaf_spec(shape, fsdp, min_size) == spec


def test_mesh_axes_and_errors():
  mesh = sharding.make_mesh(-1, 2)
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  assert sharding.batch_devices(mesh) == 8
  assert dict(sharding.make_mesh().shape) == {"data": 8, "fsdp": 1}
  with pytest.raises(ValueError, match="config.mesh.fsdp=3 does not divide the 8"):
    sharding.make_mesh(-1, 3)
  with pytest.raises(ValueError, match="asks for 16 devices"):
    sharding.make_mesh(4, 4)
  with pytest.raises(ValueError, match="divisible by the 8 devices"):
    sharding.check_batch_size(12, mesh)


def test_tree_shardings_follow_parameters_into_adam_state_and_gather_restores():
  mesh = sharding.make_mesh(-1, 4)
  params = {"w": jnp.arange(8 * 16, dtype=jnp.float32).reshape(8, 16), "b": jnp.ones(16)}
  tx = optax.adam(1e-3)
  state = step_lib.init_state(params, tx, seed=0)
  shardings = sharding.tree_shardings(state, mesh, min_size=100)
  placed = sharding.place(state, shardings)
  assert placed.trainable["w"].sharding.spec == P(None, "fsdp")
  assert placed.opt_state[0].mu["w"].sharding.spec == P(None, "fsdp")  # Moments follow.
  assert placed.trainable["b"].sharding.is_fully_replicated  # 16 < min_size.
  assert placed.step.sharding.is_fully_replicated
  assert placed.trainable["w"].addressable_shards[0].data.shape == (8, 4)
  gathered = sharding.gather(placed.trainable, mesh)
  assert gathered["w"].sharding.is_fully_replicated
  np.testing.assert_array_equal(jax.device_get(gathered["w"]), np.asarray(params["w"]))


def test_optimizer_state_stored_in_bfloat16_updates_in_float32():
  opt = config_base.optimizer_config(name="adam", schedule="constant", learning_rate=0.1,
                                     state_dtype="bfloat16")
  tx = step_lib.make_optimizer(opt, optax.constant_schedule(0.1))
  params = {"w": jnp.array([1.0, -2.0, 3.0])}
  state = tx.init(params)
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.bfloat16 for x in floats)
  assert any(x.dtype == jnp.int32 for x in jax.tree.leaves(state))  # Adam's count stays int.
  reference = optax.adam(0.1, b1=opt.b1, b2=opt.b2)
  ref_state = reference.init(params)
  for i in range(3):
    grads = {"w": jnp.array([0.3, -1.7, 2.1]) * (i + 1)}
    updates, state = tx.update(grads, state, params)
    ref_updates, ref_state = reference.update(grads, ref_state, params)
    # The same update up to the bfloat16 rounding of the stored moments (~3 digits).
    np.testing.assert_allclose(updates["w"], ref_updates["w"], rtol=2e-2)
    assert updates["w"].dtype == jnp.float32
    # Stored moments are the float32 ones rounded to bfloat16.
    np.testing.assert_allclose(np.asarray(state[0].mu["w"], np.float32),
                               np.asarray(ref_state[0].mu["w"]), rtol=1e-2)
  bad = ml_collections.ConfigDict(dict(opt.to_dict(), state_dtype="float16"))
  with pytest.raises(ValueError, match="state_dtype 'float16'"):
    step_lib.make_optimizer(bad, optax.constant_schedule(0.1))


def test_distributed_flag_combinations_are_checked():
  distributed.initialize(False)  # Single process: nothing to do.
  with pytest.raises(ValueError, match="given without --distributed"):
    distributed.initialize(False, num_processes=2)
  with pytest.raises(ValueError, match="also needs --num_processes, --process_id"):
    distributed.initialize(True, coordinator_address="localhost:1234")
  with pytest.raises(ValueError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
    distributed.initialize(True, "localhost:1234", 2, 2)


def test_urls_stay_urls_and_local_files_are_written_atomically(tmp_path):
  assert paths.absolute("gs://bucket/run") == "gs://bucket/run"
  assert paths.absolute("run").endswith("/run") and paths.absolute("run").startswith("/")
  target = tmp_path / "sub" / "x.txt"
  paths.makedirs(str(target.parent))
  paths.write_text(str(target), "hello")
  assert target.read_text() == "hello" and not (tmp_path / "sub" / "x.txt.tmp").exists()
  assert paths.directory_size(str(tmp_path)) == 5


def _train_steps(config, batches):
  """Losses and the gathered final state of a few steps of `config`'s objective."""
  from sr_jax.train import run_setup  # pylint: disable=g-import-not-at-top
  run = run_setup.build_run(config, "/tmp/unused", base=None)
  step_fn, state, losses = run.train_step(), run.state, []
  for batch in batches:
    state, metrics = step_fn(state, run.frozen, sharding.global_batch(batch, run.mesh))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(sharding.gather(state, run.mesh))


@pytest.mark.parametrize("objective", ["gan", "diffusion"])
def test_fsdp_equals_replicated_for_the_gan_and_diffusion_objectives(objective):
  """The GAN state (generator, EMA, discriminator and its batch stats) and the diffusion
  state split over 'fsdp' train to the same numbers as replicated ones."""
  rng = np.random.default_rng(0)
  if objective == "gan":
    from configs import esrgan_lora  # pylint: disable=g-import-not-at-top
    c = esrgan_lora.get_config("demo")
    c.lora.enabled, c.model.preset, c.data.crop_size = False, "micro", 32
    c.gan.discriminator, c.gan.d_num_feat = "unet_sn", 4
    c.gan.perceptual_layers = ("conv1_2=1.0",)
    lq, gt = (8, 8, 8, 3), (8, 32, 32, 3)
  else:
    from configs import sr3  # pylint: disable=g-import-not-at-top
    c = sr3.get_config("demo")
    c.model.preset, c.model.conv_impl, c.data.crop_size = "micro", "xla", 16
    c.diffusion.num_timesteps = 20
    lq, gt = (8, 4, 4, 3), (8, 16, 16, 3)
  c.batch_size = 8
  batches = [{"lq": rng.random(lq, np.float32), "gt": rng.random(gt, np.float32)}
             for _ in range(2)]
  c.mesh.fsdp = 1
  losses1, state1 = _train_steps(c, batches)
  c.mesh.fsdp, c.mesh.fsdp_min_size = 4, 1
  losses4, state4 = _train_steps(c, batches)
  np.testing.assert_allclose(losses4, losses1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               state4, state1)
