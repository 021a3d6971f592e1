"""STM-ResNet-50 (Jiang et al., ICCV 2019): torchvision's ResNet-50 over folded frames with each
bottleneck an STM block, as the authors' code builds it.

An STM block: `conv1` (1x1, BN, ReLU) to the block's width; then two paths summed: STM's
"CSTM" -- the channel-wise temporal conv (`channel_temporal`) then the block's 3x3 `conv2`
(strided, BN, ReLU) -- and its "CMM" (`motion`, max-pooled 2x2 in a strided block); then
`conv3` (1x1, BN), the shortcut and ReLU. `temporal/stm_parts.py` has the two parts; neither is
this project's CSTM.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cstm_jax.models import layers, resnet
from cstm_jax.temporal import ops
from cstm_jax.temporal.stm_parts import ChannelTemporal, Motion


class STMBottleneck(nn.Module):
  """`[N*T, H, W, C]` -> `[N*T, H / stride, W / stride, 4 features]`."""
  features: int
  stride: int = 1
  num_frames: int = 8
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    def conv(features, kernel, *, stride, name, relu=True):
      return layers.ConvBN(features, (kernel, kernel), (stride, stride),
                           [(kernel // 2, kernel // 2)] * 2, use_bias=False, relu=relu,
                           dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    h = conv(self.features, 1, stride=1, name='conv1')(x, train)
    motion = Motion(self.num_frames, self.dtype, self.param_dtype, name='motion')(h, train)
    if self.stride != 1:
      if h.shape[1] % 2 or h.shape[2] % 2:
        raise ValueError(f'STM: a strided block needs even feature maps, got {h.shape[1:3]}; '
                         'use a crop divisible by 32 (224, 256)')
      motion = nn.max_pool(motion, (2, 2), (2, 2))
    spatiotemporal = ChannelTemporal(self.num_frames, self.param_dtype,
                                     name='channel_temporal')(h)
    spatiotemporal = conv(self.features, 3, stride=self.stride, name='conv2')(spatiotemporal, train)
    h = conv(self.features * resnet.EXPANSION, 1, stride=1, name='conv3',
             relu=False)(spatiotemporal + motion, train)
    shortcut = x
    if x.shape[-1] != self.features * resnet.EXPANSION or self.stride != 1:
      shortcut = conv(self.features * resnet.EXPANSION, 1, stride=self.stride, name='downsample',
                      relu=False)(x, train)
    return nn.relu(h + shortcut)


class STMResNet50(nn.Module):
  """STM-ResNet-50: `[N, T, H, W, 3]` -> `[N, T, 2048]`; torchvision's stem and stage layout,
  STM blocks (`STMBottleneck`) in all 16 places.

  Attributes:
    width: channel multiplier (1.0 is the published network).
  """
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips, train: bool = False):
    num_frames = clips.shape[1]
    x = ops.fold_time(clips).astype(self.dtype)
    x = resnet.stem(x, train, self.width, dtype=self.dtype, param_dtype=self.param_dtype)
    x = resnet.stages(x, train, self.width, block=STMBottleneck,
                      block_kwargs={'num_frames': num_frames}, dtype=self.dtype,
                      param_dtype=self.param_dtype)
    pooled = layers.spatial_mean(x)
    return pooled.reshape(clips.shape[0], num_frames, pooled.shape[-1])
