"""The GAN objective and its runs: each network's update touches only its own tree, the step
equals a hand-sequenced generator-then-discriminator update, LoRA leaves the generator's base
bit-identical, two-stage runs resume, and network interpolation blends exactly."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import esrgan_lora
from sr_jax.adapt import lora
from sr_jax.inference import interpolate
from sr_jax.jobs import train
from sr_jax.objectives import adversarial
from sr_jax.train import checkpoint, resume, run_setup
from sr_jax.util import exports, trees


def tiny_config(lora_enabled: bool = True):
  """esrgan_lora's demo shrunk to seconds: micro RRDBNet, U-Net discriminator, 32-pixel crops."""
  c = esrgan_lora.get_config("demo")
  c.lora.enabled = lora_enabled
  c.model.preset = "micro"
  c.data.crop_size = 32
  c.data.eval_max_size = 48
  c.batch_size = 8
  c.gan.discriminator = "unet_sn"
  c.gan.d_num_feat = 4
  c.gan.perceptual_layers = ("conv1_2=1.0",)
  c.gan.gan_weight = 0.1  # Large enough that the adversarial term moves the generator.
  c.base.num_steps = 1
  c.num_steps = 1
  c.log_every, c.checkpoint_every = 1, 100  # Saves only at the end: orbax costs seconds.
  c.eval.lpips = ("alex",)
  c.num_image_summaries = 0
  return c


def random_batch(seed=0, n=8, lr=8, scale=4):
  rng = np.random.default_rng(seed)
  gt = rng.uniform(0, 1, (n, lr * scale, lr * scale, 3)).astype(np.float32)
  lq = gt.reshape(n, lr, scale, lr, scale, 3).mean(axis=(2, 4))
  return {"lq": jnp.asarray(lq), "gt": jnp.asarray(gt)}


def leaves_equal(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return run_setup.build_run(tiny_config(lora_enabled=False), str(tmp_path_factory.mktemp("r")), None)


def test_step_is_generator_update_then_discriminator_update_on_the_old_output(run):
  """The jitted step equals a hand-made sequence: G's gradient with D's old parameters, then
  D's gradient on the output of G's old parameters; EMA follows its formula."""
  obj, state, frozen, batch = run.objective, run.state, run.frozen, random_batch()
  new, metrics = jax.jit(obj.update)(state, frozen, batch)

  grads = jax.jit(jax.grad(lambda t: obj.generator_losses(t, state, frozen, batch)[0]))(
      state.trainable)
  updates, _ = obj.tx.update(grads, state.opt_state, state.trainable)
  want_g = optax.apply_updates(state.trainable, updates)
  fake = jax.jit(obj.apply)(lora.combine(state.trainable, frozen["model"]), batch["lq"])

  def d_loss(d_params):
    real, stats = obj.discriminate(d_params, state.d_stats, batch["gt"])
    fake_logits, _ = obj.discriminate(d_params, stats, fake)
    return adversarial.discriminator_loss("ragan", "basicsr", real, fake_logits)[0]

  d_grads = jax.jit(jax.grad(d_loss))(state.d_params)
  d_updates, _ = obj.d_tx.update(d_grads, state.d_opt_state, state.d_params)
  want_d = optax.apply_updates(state.d_params, d_updates)
  for got, want in ((new.trainable, want_g), (new.d_params, want_d)):
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)
  decay = obj.gan.ema_decay
  for e0, t1, e1 in zip(jax.tree.leaves(state.ema), jax.tree.leaves(new.trainable),
                        jax.tree.leaves(new.ema)):
    np.testing.assert_allclose(np.asarray(e1), decay * np.asarray(e0) + (1 - decay) *
                               np.asarray(t1), rtol=1e-5, atol=1e-7)
  assert not leaves_equal(new.d_stats, state.d_stats)  # Spectral-norm vectors advanced.
  assert {"loss", "d_loss", "gan_loss", "perceptual_loss", "pixel_loss"} <= set(metrics)


def test_each_update_touches_only_its_own_tree(run):
  """With one side's learning rate at zero, that side's parameters stay bit-identical while
  the other side's change."""
  obj, state, frozen, batch = run.objective, run.state, run.frozen, random_batch(1)
  d_frozen_obj = type(obj)(obj.model, obj.tx, obj.plan, obj.discriminator,
                           optax.sgd(0.0), obj.gan, obj.perceptual, obj.loss_kind)
  new, _ = jax.jit(d_frozen_obj.update)(state, frozen, batch)
  assert leaves_equal(new.d_params, state.d_params)
  assert not leaves_equal(new.trainable, state.trainable)
  g_frozen_obj = type(obj)(obj.model, optax.sgd(0.0), obj.plan, obj.discriminator, obj.d_tx,
                           obj.gan, obj.perceptual, obj.loss_kind)
  new, _ = jax.jit(g_frozen_obj.update)(state.replace(opt_state=optax.sgd(0.0).init(
      state.trainable)), frozen, batch)
  assert leaves_equal(new.trainable, state.trainable)
  assert not leaves_equal(new.d_params, state.d_params)


def test_two_stage_lora_gan_run_keeps_the_base_and_resumes(tmp_path):
  """PSNR stage -> LoRA GAN stage: the generator's base stays bit-identical, the adapters train,
  the table scores target and general sets with LPIPS, and a longer re-run resumes the GAN
  state (discriminator included) from its checkpoint."""
  config = tiny_config()
  workdir = str(tmp_path / "w")
  rows = train.train_and_evaluate(config, workdir)
  base, _ = exports.load_params(os.path.join(workdir, "base", "export", "params"))
  assert {"bicubic", "base", "GAN + LoRA", "base @ general set",
          "GAN + LoRA @ general set"} <= set(rows)
  assert 0 < rows["GAN + LoRA"]["lpips_alex"] < 1 and rows["GAN + LoRA"]["trainable_pct"] < 50

  config.num_steps = 2
  run = run_setup.build_run(config, workdir, jax.device_get(base))
  mgr = checkpoint.manager(workdir)
  resume.restore_step(run, mgr, 1)
  saved_d = jax.device_get(run.state.d_params)
  assert int(run.state.step) == 1
  assert leaves_equal(run.frozen["model"]["base"], lora.split(
      {"base": base, "lora": {}}, lora.labels({"base": base, "lora": {}}, (),
                                               full_finetune=False))[1]["base"])
  train.train_and_evaluate(config, workdir)  # Resumes at step 1, trains step 2.
  mgr = checkpoint.manager(workdir)
  assert mgr.latest_step() == 2
  run = run_setup.build_run(config, workdir, jax.device_get(base))
  resume.restore_step(run, mgr, 2)
  assert not leaves_equal(run.state.d_params, saved_d)
  adapters = trees.flatten(run.state.trainable["lora"])
  assert adapters and any(np.any(np.asarray(v) != 0) for k, v in adapters.items()
                          if k.endswith("/b"))
  for path, value in trees.flatten(run.frozen["model"]["base"]).items():
    if not isinstance(value, optax.MaskedNode):
      np.testing.assert_array_equal(np.asarray(value), np.asarray(trees.flatten(base)[path]))


def test_scale_mismatch_is_a_clear_error(tmp_path):
  config = tiny_config()
  config.data.degradation.scale = 2
  with pytest.raises(ValueError, match="degradation.scale=2"):
    run_setup.build_run(config, str(tmp_path), None)


def test_interpolation_blends_every_tensor_and_checks_architectures(tmp_path):
  rng = np.random.default_rng(0)
  psnr = {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
                   "bias": rng.normal(size=4).astype(np.float32)}}
  gan = jax.tree.map(lambda x: x + 1.0, psnr)
  meta = {"model": {"name": "rrdbnet", "num_feat": 4}}
  exports.save_params(str(tmp_path / "p"), psnr, meta)
  exports.save_params(str(tmp_path / "g"), gan, meta)
  assert interpolate.main(["--psnr", str(tmp_path / "p"), "--gan", str(tmp_path / "g"),
                           "--alpha", "0,0.25,1", "--dst", str(tmp_path / "o")]) == 0
  for alpha in (0.0, 0.25, 1.0):
    got, got_meta = exports.load_params(str(tmp_path / "o" / f"alpha_{alpha:.2f}"))
    assert got_meta["alpha"] == alpha and got_meta["model"] == meta["model"]
    for x, p in zip(jax.tree.leaves(got), jax.tree.leaves(psnr)):
      np.testing.assert_allclose(np.asarray(x), p + alpha, rtol=1e-6)
  exports.save_params(str(tmp_path / "other"), psnr, {"model": {"name": "srresnet"}})
  with pytest.raises(ValueError, match="different architecture"):
    interpolate.run(str(tmp_path / "p"), str(tmp_path / "other"), [0.5], str(tmp_path / "x"))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    interpolate.interpolate(psnr, gan, 1.5)
