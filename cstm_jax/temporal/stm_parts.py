"""The two temporal parts of STM's block (Jiang et al., ICCV 2019, "STM: SpatioTemporal and
Motion Encoding for Action Recognition"), as the authors' code builds them.

STM's paper calls its first part "CSTM" (channel-wise spatiotemporal module). It is not this
project's CSTM (`temporal/modules.py`, a 3D conv and a shift fused by attention): here it is
`ChannelTemporal`, and STM's "CMM" (channel-wise motion module) is `Motion`.
Both take folded frames `[N*T, H, W, C]`.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cstm_jax.models import layers
from cstm_jax.temporal import ops

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


def channel_temporal_conv(clip, kernel, impl: ops.ShiftImpl = 'roll'):
  """Depthwise kernel-3 conv over time, zero-padded: `out[t] = k0 x[t-1] + k1 x[t] + k2 x[t+1]`
  per channel. `clip` `[N, T, H, W, C]`, `kernel` `[3, C]` -> `[N, T, H, W, C]`."""
  k = kernel.astype(clip.dtype)
  return (k[0] * ops.shift_frames(clip, -1, impl) + k[1] * clip
          + k[2] * ops.shift_frames(clip, 1, impl))


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
    clip = ops.unfold_time(x, self.num_frames)
    return ops.fold_time(channel_temporal_conv(clip, kernel))


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
    clip, next_frames = (ops.unfold_time(h, self.num_frames) for h in (reduced, filtered))
    difference = ops.shift_frames(next_frames, 1) - clip  # R_t, t < T - 1
    last = np.arange(self.num_frames) == self.num_frames - 1
    difference = jnp.where(last.reshape(1, -1, 1, 1, 1), 0, difference)
    return conv(channels, (1, 1), 'expand')(ops.fold_time(difference))
