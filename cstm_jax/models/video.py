"""The video classifier shared by every model: backbone, global pool, dropout, dense head,
logits averaged over time ("average consensus"), or TRN's temporal relations in its place;
and `normalise`, the clips as the host sends them made the backbone's input.

The pipelines send uint8 RGB clips (a quarter of float32's bytes); every step (training,
evaluation, prediction) and the exported model normalise them on the device into the backbone's
convention: BGR 0-255 minus the Caffe mean for the Inception nets, RGB ImageNet mean / std for
the torchvision ones (`input_pipeline/conventions.py`)."""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cstm_jax.models.layers import ModuleDef
from cstm_jax.models.trn import RelationHead
from input_pipeline.conventions import NORMALISATION


class VideoClassifier(nn.Module):
  """`[N, T, H, W, 3]` normalised clips -> `[N, num_classes]` float32 logits.

  The backbone maps clips to pooled features `[N, T', C]` (T' = T for 2D backbones, the
  remaining temporal extent for 3D ones); the head scores each of the T' steps and averages.
  Clip features (mean over T') are sown as `intermediates/features` for embeddings and t-SNE.

  Attributes:
    backbone: constructor of the backbone module (settings bound with functools.partial).
    num_classes: size of the new dense head.
    dropout: dropout rate on the features before the head (training only).
    consensus: 'average' (the head scores each step, the scores are averaged) or
      'trn_multiscale' (TRN's relation head `trn`, `models/trn.py`, on the dropped-out features).
    trn_feature_dim: the width of TRN's frame features.
    head_init_std: the head's kernel is N(0, head_init_std); its bias starts at zero.
  """
  backbone: ModuleDef
  num_classes: int
  dropout: float = 0.5
  consensus: str = 'average'
  trn_feature_dim: int = 256
  head_init_std: float = 0.001
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips, train: bool = False):
    if clips.ndim != 5 or clips.shape[-1] != 3:
      raise ValueError(f'expected clips [N, T, H, W, 3], got shape {clips.shape}')
    features = self.backbone(name='backbone')(clips, train).astype(jnp.float32)
    self.sow('intermediates', 'features', jnp.mean(features, axis=1))
    features = nn.Dropout(self.dropout, deterministic=not train)(features)
    if self.consensus == 'trn_multiscale':
      return RelationHead(self.num_classes, self.trn_feature_dim, self.param_dtype,
                          name='trn')(features, train)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype,
                      kernel_init=nn.initializers.normal(self.head_init_std),
                      name='head')(features)
    return jnp.mean(logits, axis=1)


def num_classes_of(params) -> int | None:
  """The class count of a classifier's parameters (its `head`, or TRN's relations); None when
  they hold neither."""
  if 'head' in params:
    return int(params['head']['kernel'].shape[-1])
  relations = [v for k, v in params.get('trn', {}).items() if k.startswith('relation')]
  return int(relations[0]['out']['kernel'].shape[-1]) if relations else None


def normalise(clips: jax.Array, input_norm: str) -> jax.Array:
  """uint8 RGB `[..., H, W, 3]` -> float32 `[..., H, W, 3]` in the `input_norm` convention
  ('bgr255', 'rgb_imagenet' or 'rgb_pm1', `config/zoo.py`)."""
  if clips.dtype != jnp.uint8:
    raise TypeError(f'clips are {clips.dtype}; the steps take uint8 RGB clips as the '
                    'pipelines send them')
  mean, std = (np.asarray(v, np.float32) for v in NORMALISATION[input_norm])
  x = clips.astype(jnp.float32)
  if input_norm == 'bgr255':
    x = x[..., ::-1]
  return (x - mean) * (1 / std)
