"""3D Inception-v1 baselines: I3D (inflated, Carreira & Zisserman 2017), S3D and S3D-G (separable,
and separable with self-gating; Xie et al. 2018). Same stem, pools and mixed blocks; S3D factors
every k x k x k conv into 1 x k x k followed by k x 1 x 1. S3D-G multiplies the output of
Conv3d_2c_3x3 and of each branch of every mixed block by a sigmoid gate computed from that
output's mean over (T, H, W), as TF-Slim's `s3dg.py` does (`self_gating`). TensorFlow 'SAME'
padding and BatchNorm epsilon (1e-3) as in the original releases; the same epsilon as
torchvision's GoogLeNet (`BasicConv2d`), whose ImageNet weights these nets inflate
(`models/torch_weights.py`). At 224 px the first conv's 'SAME' padding is (2, 3) where
torchvision pads (3, 3); at sizes 2m + 1 with m + 1 a multiple of 8 the two agree throughout.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cstm_jax.models import layers, temporal_ops

BN_EPSILON_TF = 1e-3  # TF-Slim's batch_norm default, and torchvision's GoogLeNet's

# Mixed blocks: (name, [b0 1x1, b1 1x1, b1 3x3, b2 1x1, b2 3x3, b3 pool-proj]).
MIXED = {
    'Mixed_3b': (64, 96, 128, 16, 32, 32),
    'Mixed_3c': (128, 128, 192, 32, 96, 64),
    'Mixed_4b': (192, 96, 208, 16, 48, 64),
    'Mixed_4c': (160, 112, 224, 24, 64, 64),
    'Mixed_4d': (128, 128, 256, 24, 64, 64),
    'Mixed_4e': (112, 144, 288, 32, 64, 64),
    'Mixed_4f': (256, 160, 320, 32, 128, 128),
    'Mixed_5b': (256, 160, 320, 32, 128, 128),
    'Mixed_5c': (384, 192, 384, 48, 128, 128),
}
# Max pools placed before the named block: (window, strides).
POOLS = {
    'Conv3d_2b_1x1': ((1, 3, 3), (1, 2, 2)),
    'Mixed_3b': ((1, 3, 3), (1, 2, 2)),
    'Mixed_4b': ((3, 3, 3), (2, 2, 2)),
    'Mixed_5b': ((2, 2, 2), (2, 2, 2)),
}


class Unit3D(nn.Module):
  """conv (no bias) -> BN -> ReLU; with `separable`, k x k x k becomes 1 x k x k then k x 1 x 1."""
  features: int
  kernel: int = 1
  stride: int = 1
  separable: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    unit = lambda kernel, strides, name: layers.ConvBN(
        self.features, kernel, strides, 'SAME', use_bias=False, bn_epsilon=BN_EPSILON_TF,
        dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    k, s = self.kernel, self.stride
    if not self.separable or k == 1:
      return unit((k, k, k), (s, s, s), 'conv')(x, train)
    x = unit((1, k, k), (1, s, s), 'conv_s')(x, train)
    return unit((k, 1, 1), (s, 1, 1), 'conv_t')(x, train)


class SelfGating(nn.Module):
  """S3D-G's feature gating: `x * sigmoid(W mean_{T,H,W}(x) + b)`, one weight per clip and
  channel. `[N, T, H, W, C]` -> the same shape. `W` (C x C, TF-Slim's 1x1x1 conv on the pooled
  features) starts from a normal truncated at 2 std of 0.01, `b` at zero; the pool and the
  gate run in float32."""
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    pooled = jnp.mean(x, axis=(1, 2, 3), keepdims=True, dtype=jnp.float32)
    gate = nn.Dense(x.shape[-1], dtype=jnp.float32, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.truncated_normal(0.01), name='gate')(pooled)
    return temporal_ops.gated(x, jax.nn.sigmoid(gate))


class Inception3D(nn.Module):
  """`[N, T, H, W, 3]` -> `[N, ceil(T / 8), 1024]` (I3D; S3D with `separable=True`; S3D-G with
  `gating=True` too).

  Attributes:
    separable: S3D's (2+1)D separable convolutions instead of I3D's inflated 3D ones.
    gating: S3D-G's self-gating (`SelfGating`, named `<unit>_gating`) after Conv3d_2c_3x3 and
      after the last unit of each branch of every mixed block.
    width: channel multiplier (1.0 is the published network).
  """
  separable: bool = False
  gating: bool = False
  width: float = 1.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, clips, train: bool = False):
    unit = lambda features, kernel, name, stride=1: Unit3D(
        layers.scale_channels(features, self.width), kernel, stride, self.separable,
        self.dtype, self.param_dtype, name=name)
    pool = lambda h, window, strides: nn.max_pool(h, window, strides, padding='SAME')
    gate = lambda h, name: (SelfGating(self.param_dtype, name=f'{name}_gating')(h)
                            if self.gating else h)
    x = clips.astype(self.dtype)
    x = unit(64, 7, 'Conv3d_1a_7x7', stride=2)(x, train)
    x = pool(x, *POOLS['Conv3d_2b_1x1'])
    x = unit(64, 1, 'Conv3d_2b_1x1')(x, train)
    x = gate(unit(192, 3, 'Conv3d_2c_3x3')(x, train), 'Conv3d_2c_3x3')
    for name, (c0, c1a, c1b, c2a, c2b, c3) in MIXED.items():
      if name in POOLS:
        x = pool(x, *POOLS[name])
      branch0 = unit(c0, 1, f'{name}_b0')(x, train)
      branch1 = unit(c1b, 3, f'{name}_b1b')(unit(c1a, 1, f'{name}_b1a')(x, train), train)
      branch2 = unit(c2b, 3, f'{name}_b2b')(unit(c2a, 1, f'{name}_b2a')(x, train), train)
      branch3 = unit(c3, 1, f'{name}_b3b')(pool(x, (3, 3, 3), (1, 1, 1)), train)
      branches = zip((branch0, branch1, branch2, branch3), ('b0', 'b1b', 'b2b', 'b3b'))
      x = jnp.concatenate([gate(b, f'{name}_{n}') for b, n in branches], axis=-1)
    return layers.spatial_mean(x)
