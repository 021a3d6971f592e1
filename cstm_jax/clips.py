"""Clips as the host sends them -> the backbone's input, inside the jitted step.

The pipelines send uint8 RGB clips (a quarter of float32's bytes); this function, run on the
device by every step (training, evaluation, prediction) and by the exported model, turns them
into the backbone's convention: BGR 0-255 minus the Caffe mean for the Inception nets, RGB
ImageNet mean / std for the torchvision ones (`input_pipeline/conventions.py`).
"""
import jax
import jax.numpy as jnp
import numpy as np

from input_pipeline.conventions import NORMALISATION


def normalise(clips: jax.Array, colour: str) -> jax.Array:
  """uint8 RGB `[..., H, W, 3]` -> float32 `[..., H, W, 3]` in the `colour` convention."""
  if clips.dtype != jnp.uint8:
    raise TypeError(f'clips are {clips.dtype}; the steps take uint8 RGB clips as the '
                    'pipelines send them')
  mean, std = (np.asarray(v, np.float32) for v in NORMALISATION[colour])
  x = clips.astype(jnp.float32)
  if colour == 'bgr255':
    x = x[..., ::-1]
  return (x - mean) * (1 / std)
