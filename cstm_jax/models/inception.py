"""BN-Inception and Inception v3, built layer by layer from the tables in `architecture/`.

Each table row is one op of the PyTorch reference (conv, maxpool, avgpool, concat), with the
layer names of the public ImageNet conversions; rows marked `temporal_module=yes` get the
temporal module between the conv and its BatchNorm.
"""
import csv
import dataclasses
import functools
import pathlib
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from cstm_jax.models import layers, temporal_ops

TABLE_DIR = pathlib.Path(__file__).parent / 'architecture'
TABLES = {'bninception': 'bn_inception.csv', 'inception_v3': 'inception_v3.csv'}


@dataclasses.dataclass(frozen=True)
class Layer:
  op: str               # conv | maxpool | avgpool | concat
  name: str             # PyTorch layer name (conv) or output name (pool, concat)
  bn: str               # PyTorch name of the BN after a conv
  output: str
  inputs: tuple[str, ...]
  channels: int         # output channels at width 1
  kernel: tuple[int, int]
  stride: tuple[int, int]
  pad: tuple[int, int]
  temporal: bool


@functools.cache
def load_table(backbone: str) -> tuple[tuple[Layer, ...], str]:
  """The backbone's layers up to its last concat, and the name of the feature tensor.

  The global pool and the ImageNet fc rows are dropped: the video head replaces them.
  """
  if backbone not in TABLES:
    raise ValueError(f'no layer table for {backbone!r}; known: {sorted(TABLES)}')
  path = TABLE_DIR / TABLES[backbone]
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  table = []
  for row in rows:
    if row['op'] == 'fc' or (row['op'] == 'avgpool' and row['out_h'] == '1'):
      break
    number = lambda key, row=row: int(row[key]) if row[key] else 0
    table.append(Layer(
        op=row['op'], name=row['name'], bn=row['bn'], output=row['output'],
        inputs=tuple(row['input'].split('+')), channels=number('c_out'),
        kernel=(number('kh'), number('kw')), stride=(number('sh'), number('sw')),
        pad=(number('ph'), number('pw')), temporal=row['temporal_module'] == 'yes'))
  return tuple(table), table[-1].output


class InceptionBackbone(nn.Module):
  """2D Inception over folded frames: `[N, T, H, W, 3]` -> per-frame features `[N, T, C]`.

  Attributes:
    backbone: 'bninception' or 'inception_v3' (the layer table to follow).
    temporal: temporal module constructor (a partial missing `num_frames`), or None for TSN.
    width: channel multiplier (1.0 is the published network).
    partial_bn: TSN's partial BatchNorm: every BatchNorm after the first normalises with its
      running statistics in training too (`layers.ConvBN.frozen_bn`).
  """
  backbone: str = 'bninception'
  temporal: Optional[layers.ModuleDef] = None
  width: float = 1.0
  partial_bn: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips, train: bool = False):
    num_frames = clips.shape[1]
    table, features = load_table(self.backbone)
    tensors = {'data': temporal_ops.fold_time(clips).astype(self.dtype)}
    first_conv = next(layer.name for layer in table if layer.op == 'conv')
    for layer in table:
      inputs = [tensors[name] for name in layer.inputs]
      if layer.op == 'conv':
        temporal = None
        if layer.temporal and self.temporal is not None:
          temporal = functools.partial(self.temporal, num_frames=num_frames)
        out = layers.ConvBN(
            layers.scale_channels(layer.channels, self.width), layer.kernel, layer.stride,
            [(p, p) for p in layer.pad], temporal=temporal,
            frozen_bn=self.partial_bn and layer.name != first_conv, dtype=self.dtype,
            param_dtype=self.param_dtype, name=layer.name)(inputs[0], train)
      elif layer.op == 'maxpool':
        out = layers.max_pool_ceil(inputs[0], layer.kernel, layer.stride, layer.pad)
      elif layer.op == 'avgpool':
        out = layers.avg_pool_include_pad(inputs[0], layer.kernel, layer.stride, layer.pad)
      elif layer.op == 'concat':
        shapes = {tuple(x.shape[1:3]) for x in inputs}
        if len(shapes) > 1:
          raise ValueError(
              f'{self.backbone}: input size {clips.shape[2:4]} gives branches of spatial sizes '
              f'{sorted(shapes)} at {layer.name}; use the native crop (224 for bninception, '
              f'229 for inception_v3) or another size that keeps the branches aligned')
        out = jnp.concatenate(inputs, axis=-1)
      else:
        raise ValueError(f'unknown op {layer.op!r} in the {self.backbone} table')
      tensors[layer.output] = out
    pooled = layers.spatial_mean(tensors[features])
    return pooled.reshape(clips.shape[0], num_frames, pooled.shape[-1])
