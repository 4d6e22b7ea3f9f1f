"""sr_jax: adapting image restoration and super-resolution networks cheaply, in JAX."""

from sr_jax import large_pages as _large_pages

# `python -m sr_jax.<tool>` restarts once with glibc's large pages (see sr_jax.large_pages);
# importing sr_jax as a library never does.
_large_pages.reexecute_if_wanted()
