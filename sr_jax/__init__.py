"""sr_jax: adapting image restoration and super-resolution networks cheaply, in JAX."""

import os as _os

# TensorFlow serves only CLU's TensorBoard writer here. Without these, importing it prints two
# "All log messages before absl::InitializeLog()" warnings and a oneDNN notice on every run;
# oneDNN's fused ops change only TensorFlow's own math, which sr_jax never uses.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from sr_jax.util import large_pages as _large_pages  # noqa: E402

# `python -m sr_jax.<tool>` restarts once with glibc's large pages (see sr_jax.util.large_pages);
# importing sr_jax as a library never does.
_large_pages.reexecute_if_wanted()
