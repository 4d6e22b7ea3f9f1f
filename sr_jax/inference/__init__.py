"""Restoring images with a trained model: tiled inference, TLC for large images, weight
interpolation, adapter-bank batches and image file I/O. `python -m sr_jax.infer` is the command.
"""
