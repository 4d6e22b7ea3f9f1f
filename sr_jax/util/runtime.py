"""Process set-up shared by the command-line tools."""

import logging as py_logging
import os

from absl import logging

from sr_jax.util import large_pages

# Libraries whose INFO lines drown the run's own progress; their warnings still show.
_QUIET = ("/orbax/", "/grain/", "/tensorflow/", "/jax/_src/", "/clu/")
# Warnings that say nothing a user can act on: (source file, text), dropped at any level.
# sr_jax registers its own orbax array handler on purpose (checkpoint.use_whole_small_arrays),
# and JAX reports each accelerator plugin it probes and does not find.
_HARMLESS = (("type_handler_registry.py", "overriding"),
             ("ocdbt_utils.py", "Skipping merge of OCDBT"),  # Exports are written without it.
             ("xla_bridge.py", "Unable to initialize backend"),
             ("xla_bridge.py", "Platform 'tpu' is experimental"))


class _QuietLibraries(py_logging.Filter):

  def filter(self, record: py_logging.LogRecord) -> bool:
    if any(f in record.pathname and t in record.getMessage() for f, t in _HARMLESS):
      return False
    return record.levelno >= py_logging.WARNING or not any(q in record.pathname for q in _QUIET)


def quiet_libraries() -> None:
  """Keeps library INFO lines and harmless warnings off the console (absl's handler)."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


def setup() -> None:
  """Keeps TensorFlow (used only by CLU's TensorBoard writer) off GPUs/TPUs, quiets logs.

  Call after `distributed.initialize` (querying devices starts JAX's backend).
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  quiet_libraries()  # Before JAX probes its backends.
  from sr_jax.util import console  # pylint: disable=g-import-not-at-top
  console.short_console()
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (ImportError, RuntimeError, ValueError):  # No TF, or devices already initialised.
    pass
  import jax
  # In a multi-process run only process 0 reports; the others log warnings and errors.
  logging.set_verbosity(logging.INFO if jax.process_index() == 0 else logging.WARNING)
  logging.info("JAX %s on %d %s device(s), process %d of %d.", jax.__version__,
               jax.device_count(), jax.default_backend(), jax.process_index(),
               jax.process_count())
  logging.info(large_pages.describe())
