"""Building blocks shared by the backbones and temporal modules: BatchNorm as the PyTorch
references train it, conv -> [temporal module] -> BN -> ReLU, Caffe pools."""
import contextlib
import contextvars
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
from flax.linen import dtypes as flax_dtypes
import jax
import jax.numpy as jnp

Dtype = Any
ModuleDef = Callable[..., nn.Module]

BN_MOMENTUM = 0.9  # Flax keeps 0.9 of the old statistics: PyTorch's momentum 0.1
BN_EPSILON = 1e-5


# How many groups of clips a training BatchNorm normalises apart (docs/design.md, "Recipe"):
# 1, the whole batch (SyncBN); more, each group its own statistics, as each GPU of PyTorch's
# nn.DataParallel normalises its share. Set for a traced train step by `statistic_groups`.
_GROUPS = contextvars.ContextVar('batch_norm_groups', default=1)


@contextlib.contextmanager
def statistic_groups(groups: int):
  """Every training `BatchNorm` traced inside normalises the batch in `groups` groups of
  consecutive clips (the batch is clip-major, so each group holds whole clips)."""
  token = _GROUPS.set(groups)
  try:
    yield
  finally:
    _GROUPS.reset(token)


class BatchNorm(nn.Module):
  """BatchNorm as PyTorch's `nn.BatchNorm{2,3}d` trains it: statistics over all axes but the
  last, normalised with the batch's biased variance, and running statistics updated with
  momentum 0.1 from the batch's mean and its *unbiased* variance (n / (n - 1) times the biased
  one, n the values per channel), as PyTorch updates them. Otherwise it computes as flax's
  `nn.BatchNorm` does (float32 statistics, `E[x^2] - E[x]^2`, the same parameter and statistic
  names), whose running variance takes the biased one.

  In training, the batch may be normalised in groups of clips (`statistic_groups`): each
  group with its own statistics, the running ones updated with their mean over the groups.

  Attributes:
    use_running_average: normalise with the running statistics and leave them (evaluation,
      and partial BatchNorm in training).
  """
  use_running_average: bool
  momentum: float = BN_MOMENTUM
  epsilon: float = BN_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    ra_mean = self.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32),
                            (features,))
    ra_var = self.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), (features,))
    groups = 1 if self.use_running_average or self.is_initializing() else _GROUPS.get()
    if groups > 1:
      if x.shape[0] % groups:
        raise ValueError(f'BatchNorm {self.name}: a batch of {x.shape[0]} rows does not split '
                         f'into {groups} groups of whole clips')
      x = x.reshape((groups, x.shape[0] // groups) + x.shape[1:])
      axes = tuple(range(1, x.ndim - 1))
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      values = x.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
      mean = values.mean(axes, keepdims=groups > 1)
      var = jnp.maximum(0.0, jnp.square(values).mean(axes, keepdims=groups > 1)
                        - jnp.square(mean))
      if not self.is_initializing():
        count = x.size // features // groups
        unbiased = var * (count / max(count - 1, 1))
        if groups > 1:  # the running statistics take the mean over the groups
          mean_all = mean.reshape(groups, features).mean(0)
          unbiased = unbiased.reshape(groups, features).mean(0)
        else:
          mean_all = mean
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean_all
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    scale = self.param('scale', nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,), self.param_dtype)
    y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    if groups > 1:
      y = y.reshape((-1,) + y.shape[2:])
    return jnp.asarray(y, flax_dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))


def batch_norm(train: bool, dtype: Any, param_dtype: Any, name: str,
               epsilon: float = BN_EPSILON) -> BatchNorm:
  """`BatchNorm` with PyTorch's settings (eps 1e-5 unless given, momentum 0.1).

  Training normalises with the batch's statistics and updates the running ones (mutable
  'batch_stats'); evaluation uses the running ones.
  """
  return BatchNorm(use_running_average=not train, epsilon=epsilon, dtype=dtype,
                   param_dtype=param_dtype, name=name)


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
  bn_epsilon: float = BN_EPSILON
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
    x = batch_norm(train and not self.frozen_bn, self.dtype, self.param_dtype, 'bn',
                   self.bn_epsilon)(x)
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

