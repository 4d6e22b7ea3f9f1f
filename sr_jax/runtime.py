"""Process set-up shared by the command-line tools."""

import logging as py_logging
import os

from absl import logging

# Libraries whose INFO lines drown the run's own progress; their warnings still show.
_QUIET = ("/orbax/", "/grain/", "/tensorflow/", "/jax/_src/")


class _QuietLibraries(py_logging.Filter):

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or not any(q in record.pathname for q in _QUIET)


def setup() -> None:
  """Keeps TensorFlow (used only by CLU's TensorBoard writer) off GPUs/TPUs, quiets logs.

  Call after `distributed.initialize` (querying devices starts JAX's backend).
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf
    tf.config.set_visible_devices([], "GPU")
    tf.config.set_visible_devices([], "TPU")
  except (ImportError, RuntimeError, ValueError):  # No TF, or devices already initialised.
    pass
  import jax
  # In a multi-process run only process 0 reports; the others log warnings and errors.
  logging.set_verbosity(logging.INFO if jax.process_index() == 0 else logging.WARNING)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  logging.info("JAX %s on %d %s device(s), process %d of %d.", jax.__version__,
               jax.device_count(), jax.default_backend(), jax.process_index(),
               jax.process_count())
