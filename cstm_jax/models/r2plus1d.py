"""R(2+1)D-18 / -34 (Tran et al. 2018) in the torchvision `VideoResNet` layout.

Every 3x3x3 conv is factored into 1x3x3 (to `mid` channels) -> BN -> ReLU -> 3x1x1, with `mid`
chosen so the factored pair has the parameters of the full 3D conv.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cstm_jax.models import layers

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)


def mid_channels(in_channels: int, out_channels: int) -> int:
  """torchvision's midplanes: t d^2 N_in N_out / (d^2 N_in + t N_out) with t = d = 3."""
  return (in_channels * out_channels * 27) // (in_channels * 9 + 3 * out_channels)


class Conv2Plus1D(nn.Module):
  """1x3x3 conv (stride 1,s,s) -> BN -> ReLU -> 3x1x1 conv (stride s,1,1); no BN at the end."""
  features: int
  mid: int
  stride: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    s = self.stride
    x = layers.ConvBN(self.mid, (1, 3, 3), (1, s, s), [(0, 0), (1, 1), (1, 1)], use_bias=False,
                      dtype=self.dtype, param_dtype=self.param_dtype, name='conv_s')(x, train)
    return nn.Conv(self.features, (3, 1, 1), (s, 1, 1), padding=[(1, 1), (0, 0), (0, 0)],
                   use_bias=False, kernel_init=layers.conv_init, dtype=self.dtype,
                   param_dtype=self.param_dtype, name='conv_t')(x)


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    mid = mid_channels(x.shape[-1], self.features)
    norm = lambda name: layers.batch_norm(train, self.dtype, self.param_dtype, name)
    conv = lambda stride, name: Conv2Plus1D(self.features, mid, stride, self.dtype,
                                            self.param_dtype, name=name)
    h = nn.relu(norm('bn1')(conv(self.stride, 'conv1')(x, train)))
    h = norm('bn2')(conv(1, 'conv2')(h, train))
    shortcut = x
    if x.shape[-1] != self.features or self.stride != 1:
      s = self.stride
      shortcut = layers.ConvBN(self.features, (1, 1, 1), (s, s, s), [(0, 0)] * 3, use_bias=False,
                               relu=False, dtype=self.dtype, param_dtype=self.param_dtype,
                               name='downsample')(x, train)
    return nn.relu(h + shortcut)


class R2Plus1D(nn.Module):
  """`[N, T, H, W, 3]` -> `[N, ceil(T / 8), 512]`.

  Attributes:
    depth: 18 or 34 (blocks per stage as in ResNet-18 / -34).
    width: channel multiplier (1.0 is the published network).
  """
  depth: int = 18
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips, train: bool = False):
    if self.depth not in DEPTHS:
      raise ValueError(f'R(2+1)D depth {self.depth} is not one of {sorted(DEPTHS)}')
    x = clips.astype(self.dtype)
    stem = lambda features, kernel, strides, pad, name: layers.ConvBN(
        features, kernel, strides, pad, use_bias=False, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)
    x = stem(layers.scale_channels(45, self.width), (1, 7, 7), (1, 2, 2), [(0, 0), (3, 3), (3, 3)],
             'stem_spatial')(x, train)
    x = stem(layers.scale_channels(64, self.width), (3, 1, 1), (1, 1, 1), [(1, 1), (0, 0), (0, 0)],
             'stem_temporal')(x, train)
    for stage, (blocks, features) in enumerate(zip(DEPTHS[self.depth], STAGE_WIDTHS)):
      for block in range(blocks):
        x = BasicBlock(layers.scale_channels(features, self.width),
                       stride=2 if stage and not block else 1, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f'layer{stage + 1}_{block}')(x, train)
    return layers.spatial_mean(x)
