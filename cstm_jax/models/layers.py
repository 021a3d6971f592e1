"""Building blocks shared by the backbones and temporal modules: BatchNorm as the PyTorch
references train it, conv -> [temporal module] -> BN -> ReLU, Caffe pools."""
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
ModuleDef = Callable[..., nn.Module]

BN_MOMENTUM = 0.9  # Flax keeps 0.9 of the old statistics: PyTorch's momentum 0.1
BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Any, param_dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm with PyTorch's settings (eps 1e-5, momentum 0.1); statistics over all but C.

  Training normalises with the batch's statistics and updates the running ones (mutable
  'batch_stats'); evaluation uses the running ones.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      dtype=dtype, param_dtype=param_dtype, name=name)


# He init (fan out), as torchvision does for conv layers trained from scratch.
conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
  """Channels at a width multiplier, rounded to a multiple of `divisor` (1.0 keeps the table's)."""
  if width == 1.0:
    return channels
  return max(divisor, int(round(channels * width / divisor)) * divisor)


class ConvBN(nn.Module):
  """conv -> optional temporal module -> BatchNorm -> optional ReLU (docs/design.md, "Temporal
  modules": where a module goes).

  Works for 2D (`[B, H, W, C]`) and 3D (`[N, T, H, W, C]`) inputs; the kernel rank decides.
  Submodules: `conv`, `temporal` (when given) and `bn`; the block itself carries the layer name.
  `frozen_bn`: the BatchNorm normalises with its running statistics in training too, and leaves
  them as they are (TSN's partial BatchNorm; the optimizer keeps its scale and bias).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  padding: str | Sequence[tuple[int, int]]  # explicit (low, high) pairs, or 'SAME'
  use_bias: bool = True
  relu: bool = True
  temporal: Optional[ModuleDef] = None
  frozen_bn: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, tuple(self.kernel_size), tuple(self.strides),
                padding=self.padding if isinstance(self.padding, str) else tuple(self.padding),
                use_bias=self.use_bias, kernel_init=conv_init,
                dtype=self.dtype, param_dtype=self.param_dtype, name='conv')(x)
    if self.temporal is not None:
      x = self.temporal(name='temporal')(x, train)
    x = batch_norm(train and not self.frozen_bn, self.dtype, self.param_dtype, 'bn')(x)
    return nn.relu(x) if self.relu else x


def ceil_mode_padding(size: int, window: int, stride: int, pad: int) -> tuple[int, int]:
  """Caffe ceil-mode output: `ceil((size + 2 pad - window) / stride) + 1`, last window starting
  inside the input (plus its left padding). Returns (low, high) padding giving that output."""
  out = math.ceil((size + 2 * pad - window) / stride) + 1
  if pad and (out - 1) * stride >= size + pad:
    out -= 1
  return pad, max(0, (out - 1) * stride + window - size - pad)


def max_pool_ceil(x: jax.Array, window: Sequence[int], strides: Sequence[int],
                  pads: Sequence[int]) -> jax.Array:
  """Caffe ceil-mode max pool over the spatial dims of `[B, H, W, C]` (pad with -inf)."""
  padding = [ceil_mode_padding(s, k, st, p) for s, k, st, p in
             zip(x.shape[1:3], window, strides, pads)]
  return nn.max_pool(x, tuple(window), tuple(strides), padding=padding)


def avg_pool_include_pad(x: jax.Array, window: Sequence[int], strides: Sequence[int],
                         pads: Sequence[int]) -> jax.Array:
  """Average pool over `[B, H, W, C]` that counts zero padding in the divisor (PyTorch default)."""
  return nn.avg_pool(x, tuple(window), tuple(strides), padding=[(p, p) for p in pads],
                     count_include_pad=True)


def spatial_mean(x: jax.Array) -> jax.Array:
  """Global average pool over H, W: `[..., H, W, C]` -> `[..., C]`, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(-3, -2))

