"""STM (Jiang et al., ICCV 2019, "STM: SpatioTemporal and Motion Encoding for Action
Recognition") as the authors' code builds it: the block that replaces every bottleneck of
ResNet-50 (`resnet.ResNet50(block=STMBottleneck)`), and its two temporal parts.

An STM block: `conv1` (1x1, BN, ReLU) to the block's width; then two paths summed: STM's
"CSTM" -- the channel-wise temporal conv (`channel_temporal`) then the block's 3x3 `conv2`
(strided, BN, ReLU) -- and its "CMM" (`motion`, max-pooled 2x2 in a strided block); then
`conv3` (1x1, BN), the shortcut and ReLU.

STM's paper calls its first part "CSTM" (channel-wise spatiotemporal module). It is not this
project's CSTM (`temporal/modules.py`, a 3D conv and a shift fused by attention): here it is
`ChannelTemporal`, and STM's "CMM" (channel-wise motion module) is `Motion`. Both take folded
frames `[N*T, H, W, C]`.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cstm_jax.models import layers, resnet, temporal_ops

MOTION_REDUCTION = 16  # CMM's channel reduction (the code's reduce_time)


def shift_init_kernel(channels: int) -> np.ndarray:
  """`[3, C]` taps over (t-1, t, t+1) that start the channel-wise temporal conv as a shift:
  channels [0, C/4) take frame t-1, the next C/2 frame t, the last C/4 frame t+1 (the
  authors' initialisation)."""
  kernel = np.zeros((3, channels), np.float32)
  quarter, half = channels // 4, channels // 2
  kernel[0, :quarter] = 1.0
  kernel[1, quarter:quarter + half] = 1.0
  kernel[2, channels - quarter:] = 1.0
  return kernel


class ChannelTemporal(nn.Module):
  """STM's channel-wise temporal conv (its "CSTM" before the bottleneck's 3x3 conv): one
  kernel-3 filter over time per channel, no bias, initialised as a shift (`shift_init_kernel`).
  `[N*T, H, W, C]` -> the same shape.

  Attributes:
    num_frames: T, the frames of a clip.
  """
  num_frames: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', lambda _, c: jnp.asarray(shift_init_kernel(c), self.param_dtype),
                        x.shape[-1])
    clip = temporal_ops.unfold_time(x, self.num_frames)
    return temporal_ops.fold_time(temporal_ops.channel_temporal_conv(clip, kernel))


class Motion(nn.Module):
  """STM's channel-wise motion module ("CMM"): features of frame t+1, filtered by a depthwise
  3x3 conv, minus those of frame t, in C/16 channels, zero for the last frame:
  `1x1 conv -> BN` to C/16, `R_t = dw3x3(F)_{t+1} - F_t`, `1x1 conv` back to C (no bias, no BN
  after it). `[N*T, H, W, C]` -> the same shape.

  Attributes:
    num_frames: T, the frames of a clip.
  """
  num_frames: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    channels = x.shape[-1]
    reduced_channels = max(1, channels // MOTION_REDUCTION)
    conv = lambda features, kernel, name, **kw: nn.Conv(
        features, kernel, padding=[(k // 2, k // 2) for k in kernel], use_bias=False,
        kernel_init=layers.conv_init, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        **kw)
    reduced = layers.ConvBN(reduced_channels, (1, 1), (1, 1), [(0, 0), (0, 0)], use_bias=False,
                            relu=False, dtype=self.dtype, param_dtype=self.param_dtype,
                            name='reduce')(x, train)
    filtered = conv(reduced_channels, (3, 3), 'spatial',
                    feature_group_count=reduced_channels)(reduced)
    clip, next_frames = (temporal_ops.unfold_time(h, self.num_frames) for h in (reduced, filtered))
    difference = temporal_ops.shift_frames(next_frames, 1) - clip  # R_t, t < T - 1
    last = np.arange(self.num_frames) == self.num_frames - 1
    difference = jnp.where(last.reshape(1, -1, 1, 1, 1), 0, difference)
    return conv(channels, (1, 1), 'expand')(temporal_ops.fold_time(difference))


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
