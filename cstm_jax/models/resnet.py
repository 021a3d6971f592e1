"""ResNet-50: the torchvision 2D network (TSN / TSM) and its I3D inflation (PyTorchVideo i3d_r50).

The bottleneck is shared: in 2D its kernels are (kh, kw); inflated, (kt, kh, kw) with the
temporal extent on the first 1x1 conv only, as in PyTorchVideo's `i3d_r50`.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from cstm_jax.models import layers, temporal_ops

STAGE_DEPTHS = (3, 4, 6, 3)
STAGE_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
# PyTorchVideo i3d_r50: temporal kernel of conv_a, cycled over the blocks of each stage.
I3D_TEMPORAL_KERNELS = ((3,), (3, 1), (3, 1), (1, 3))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 with a projection shortcut; 2D or 3D by the input's rank.

  `shift` (TSM) is applied to the residual branch before conv1, leaving the identity intact.
  """
  features: int
  stride: int = 1
  temporal_kernel: int = 1
  shift: Optional[layers.ModuleDef] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    is_3d = x.ndim == 5

    def conv(features, temporal_kernel, kernel, *, stride, name, relu=True):
      spatial_pad = [(kernel // 2, kernel // 2)] * 2
      if is_3d:
        kt = temporal_kernel
        shape, strides = (kt, kernel, kernel), (1, stride, stride)
        pad = [(kt // 2, kt // 2)] + spatial_pad
      else:
        shape, strides, pad = (kernel, kernel), (stride, stride), spatial_pad
      return layers.ConvBN(features, shape, strides, pad, use_bias=False, relu=relu,
                           dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    branch = x if self.shift is None else self.shift(name='shift')(x, train)
    h = conv(self.features, self.temporal_kernel, 1, stride=1, name='conv1')(branch, train)
    h = conv(self.features, 1, 3, stride=self.stride, name='conv2')(h, train)
    h = conv(self.features * EXPANSION, 1, 1, stride=1, name='conv3', relu=False)(h, train)
    shortcut = x
    if x.shape[-1] != self.features * EXPANSION or self.stride != 1:
      shortcut = conv(self.features * EXPANSION, 1, 1, stride=self.stride, name='downsample',
                      relu=False)(x, train)
    return nn.relu(h + shortcut)


def _stem(x, train, width, *, dtype=jnp.float32, param_dtype=jnp.float32):
  """torchvision's 2D stem: 7x7 conv (stride 2), BN, ReLU, 3x3 max pool (stride 2)."""
  x = layers.ConvBN(layers.scale_channels(64, width), (7, 7), (2, 2), [(3, 3), (3, 3)],
                    use_bias=False, dtype=dtype, param_dtype=param_dtype, name='conv1')(x, train)
  return nn.max_pool(x, (3, 3), (2, 2), padding=[(1, 1), (1, 1)])


def _stages(x, train, width, *, block_kwargs, block=None, temporal_kernels=None,
           after_first_stage=None, dtype=jnp.float32, param_dtype=jnp.float32):
  """The four residual stages (torchvision names layer1..layer4, blocks numbered from 0) of
  `block` (default `Bottleneck`; `temporal_kernels` is Bottleneck's)."""
  for stage, (depth, features) in enumerate(zip(STAGE_DEPTHS, STAGE_WIDTHS)):
    for index in range(depth):
      kwargs = dict(block_kwargs)
      if block is None:
        kernels = temporal_kernels[stage] if temporal_kernels else (1,)
        kwargs['temporal_kernel'] = kernels[index % len(kernels)]
      x = (block or Bottleneck)(layers.scale_channels(features, width),
                                stride=2 if stage and not index else 1, dtype=dtype,
                                param_dtype=param_dtype, name=f'layer{stage + 1}_{index}',
                                **kwargs)(x, train)
    if stage == 0 and after_first_stage is not None:
      x = after_first_stage(x)
  return x


class ResNet50(nn.Module):
  """torchvision ResNet-50 over folded frames: `[N, T, H, W, 3]` -> `[N, T, 2048]`.

  Attributes:
    temporal: None (TSN) or a TemporalShift constructor (TSM), which goes on the residual
      branch of every bottleneck.
    block: None (torchvision's bottleneck), or a block constructor that takes `num_frames`
      and replaces every bottleneck (STM's, `models/stm.py`).
    width: channel multiplier (1.0 is the published network).
  """
  temporal: Optional[layers.ModuleDef] = None
  block: Optional[layers.ModuleDef] = None
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips, train: bool = False):
    num_frames = clips.shape[1]
    x = temporal_ops.fold_time(clips).astype(self.dtype)
    x = _stem(x, train, self.width, dtype=self.dtype, param_dtype=self.param_dtype)
    shift = None
    if self.temporal is not None:
      shift = functools.partial(self.temporal, num_frames=num_frames)
    if self.block is None:
      x = _stages(x, train, self.width, block_kwargs={'shift': shift}, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    else:
      x = _stages(x, train, self.width, block=self.block, block_kwargs={'num_frames': num_frames},
                  dtype=self.dtype, param_dtype=self.param_dtype)
    pooled = layers.spatial_mean(x)
    return pooled.reshape(clips.shape[0], num_frames, pooled.shape[-1])


class I3DResNet50(nn.Module):
  """Inflated ResNet-50 (PyTorchVideo `i3d_r50`): `[N, T, H, W, 3]` -> `[N, T / 2, 2048]`.

  Stem 5x7x7, temporal max pool by 2 after the first stage, conv_a inflated to 3x1x1 in the
  pattern of `I3D_TEMPORAL_KERNELS`.

  Attributes:
    width: channel multiplier (1.0 is the published network).
  """
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips, train: bool = False):
    x = clips.astype(self.dtype)
    x = layers.ConvBN(layers.scale_channels(64, self.width), (5, 7, 7), (1, 2, 2),
                      [(2, 2), (3, 3), (3, 3)], use_bias=False, dtype=self.dtype,
                      param_dtype=self.param_dtype, name='stem')(x, train)
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding=[(0, 0), (1, 1), (1, 1)])
    temporal_pool = lambda h: nn.max_pool(h, (2, 1, 1), (2, 1, 1)) if h.shape[1] > 1 else h
    x = _stages(x, train, self.width, block_kwargs={}, temporal_kernels=I3D_TEMPORAL_KERNELS,
               after_first_stage=temporal_pool, dtype=self.dtype, param_dtype=self.param_dtype)
    return layers.spatial_mean(x)
