"""Temporal modules: the six variants of docs/design.md ("Temporal modules") as Linen modules.

Each module maps folded frames `[N*T, H, W, C]` to the same shape and sits between a conv and
that conv's BatchNorm. `num_frames` (T) is an attribute so the module can unfold the clip.
`tsn` inserts nothing, so it has no module here.
"""
import functools
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from cstm_jax.models.layers import batch_norm
from cstm_jax.models import temporal_ops

Dtype = Any


def squeeze_width(channels: int) -> int:
  """Hidden width of the attention MLPs: d = max(C // 16, 32)."""
  return max(channels // 16, 32)


def conv3d_groups(channels: int, mode: str, group_width: int = 16) -> int:
  """Feature groups of the 3D branch: 'grouped' (`group_width` channels each; at widths where
  that does not divide C, the nearest coarser grouping that does), 'depthwise' or 'full'."""
  if mode == 'grouped':
    groups = max(1, channels // group_width)
    while channels % groups:
      groups -= 1
  elif mode == 'depthwise':
    groups = channels
  elif mode == 'full':
    groups = 1
  else:
    raise ValueError(f"unknown conv3d_grouping {mode!r}; expected 'grouped', 'depthwise' or 'full'")
  return groups


class TemporalShift(nn.Module):
  """TSM: `Y = S(X)`; no parameters. `[N*T, H, W, C]` -> the same shape.

  Attributes:
    num_frames: T, the frames of a clip (to unfold the folded batch).
    shift_div: C // shift_div channels move each way.
    shift_impl: 'roll' (jnp.roll, wrapped frame zeroed) or 'slice' (slice and pad).
  """
  num_frames: int
  shift_div: int = 8
  shift_impl: temporal_ops.ShiftImpl = 'roll'

  @nn.compact
  def __call__(self, x, train: bool = False):
    clip = temporal_ops.unfold_time(x, self.num_frames)
    return temporal_ops.fold_time(
        temporal_ops.temporal_shift(clip, self.shift_div, self.shift_impl))


class GateShift(nn.Module):
  """GSM (Sudhakaran et al. 2020): tanh gate from a grouped 3x3x3 conv, gated shift both ways.

  The gate conv (C -> 2, two groups, bias) starts at zero, so the module starts as the identity
  (up to the reference's channel interleave). With `attention` (the `gsm_attention` ablation)
  squeeze-excitation over (T, H, W) reweights the output channels:
  `Y = G * sigmoid(Dense_C(ReLU(Dense_d(mean(G)))))`. `[N*T, H, W, C]` -> the same shape.

  Attributes:
    num_frames: T, the frames of a clip.
    gsm_interleave: the reference code's channel interleave inside each half.
    shift_impl: 'roll' or 'slice'.
    attention: add the squeeze-excitation (`gsm_attention`).
    dtype: compute dtype; parameters are `param_dtype`.
  """
  num_frames: int
  gsm_interleave: bool = True
  shift_impl: temporal_ops.ShiftImpl = 'roll'
  attention: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    clip = temporal_ops.unfold_time(x, self.num_frames)
    channels = clip.shape[-1]
    h = batch_norm(train, self.dtype, self.param_dtype, 'bn')(clip)
    kernel = self.param('gate_kernel', nn.initializers.zeros_init(),
                        (3, 3, 3, channels // 2, 2), self.param_dtype)
    bias = self.param('gate_bias', nn.initializers.zeros_init(), (2,), self.param_dtype)
    gate = jnp.tanh(temporal_ops.conv3d(nn.relu(h), kernel, groups=2) + bias.astype(h.dtype))
    out = temporal_ops.gate_shift(clip, gate.astype(clip.dtype), self.gsm_interleave,
                                  self.shift_impl)
    if self.attention:
      # In float32 whatever the compute dtype, as CSTM's: a mean over a whole clip, a tiny MLP.
      dense = functools.partial(nn.Dense, dtype=jnp.float32, param_dtype=self.param_dtype)
      squeezed = jnp.mean(out, axis=(1, 2, 3), keepdims=True, dtype=jnp.float32)
      z = nn.relu(dense(squeeze_width(channels), name='squeeze')(squeezed))
      out = temporal_ops.gated(out, jax.nn.sigmoid(dense(channels, name='excite')(z)))
    return temporal_ops.fold_time(out)


class Conv3DBranch(nn.Module):
  """The 3D branch D: 3x3x3 conv over (T, H, W), no bias, identity-centre init (D(X) = X at init).

  Input and output `[N, T, H, W, C]`.

  Attributes:
    mode: 'grouped' (`group_width` channels a group), 'depthwise' or 'full'.
    group_width: channels per group in 'grouped' mode.
  """
  mode: str = 'grouped'
  group_width: int = 16
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, clip):
    channels = clip.shape[-1]
    groups = conv3d_groups(channels, self.mode, self.group_width)
    init = lambda _, c, g: temporal_ops.identity_centre_kernel(c, g, dtype=self.param_dtype)
    kernel = self.param('kernel', init, channels, groups)
    return temporal_ops.conv3d(clip, kernel, groups)


class CSTM(nn.Module):
  """Collaborative spatial-temporal module: a 3D branch D and a shift branch S fused by attention.

  `U = D + S`; squeeze `s = mean(U)` over (T, H, W) per clip (or over (H, W) per frame);
  `z = ReLU(Dense_d(s))`; zero-initialised heads give `[alpha_D, alpha_S] = softmax([a_D, a_S])`
  across branches; `Y = alpha_D * D + alpha_S * S`. At init `Y = 0.5 X + 0.5 S(X)`.
  Without `attention` it is the `3d_shift_sum` ablation, `Y = D + S`.
  `[N*T, H, W, C]` -> the same shape.

  The weights alpha_D, alpha_S = 1 - alpha_D have one value per clip and channel,
  `[N, 1, 1, 1, C]` (per frame with `attention_pool='frame'`: `[N, T, 1, 1, C]`), broadcast
  over the other axes of the branches.

  Attributes:
    num_frames: T, the frames of a clip.
    attention: fuse by attention (`cstm`); False sums the branches (`3d_shift_sum`).
    attention_pool: squeeze over the whole 'clip' or per 'frame'.
    cstm_shift: the shift branch, 'tsm' (S) or 'gsm' (a GateShift).
    shift_div, shift_impl: of the TSM shift.
    gsm_interleave: of the GSM shift.
    conv3d_grouping, conv3d_group_width: the 3D branch's grouping (`Conv3DBranch`).
    dtype: compute dtype of the branches (the attention runs in float32).
  """
  num_frames: int
  attention: bool = True
  attention_pool: Literal['clip', 'frame'] = 'clip'
  cstm_shift: Literal['tsm', 'gsm'] = 'tsm'
  shift_div: int = 8
  shift_impl: temporal_ops.ShiftImpl = 'roll'
  gsm_interleave: bool = True
  conv3d_grouping: str = 'grouped'
  conv3d_group_width: int = 16
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    clip = temporal_ops.unfold_time(x, self.num_frames)
    conv = Conv3DBranch(self.conv3d_grouping, self.conv3d_group_width, self.param_dtype,
                        name='conv3d')(clip)
    if self.cstm_shift == 'tsm':
      shifted = temporal_ops.temporal_shift(clip, self.shift_div, self.shift_impl)
    elif self.cstm_shift == 'gsm':
      gsm = GateShift(self.num_frames, self.gsm_interleave, self.shift_impl, dtype=self.dtype,
                      param_dtype=self.param_dtype, name='gsm')
      shifted = temporal_ops.unfold_time(gsm(x, train), self.num_frames)
    else:
      raise ValueError(f"unknown cstm_shift {self.cstm_shift!r}; expected 'tsm' or 'gsm'")
    if not self.attention:
      return temporal_ops.fold_time(conv + shifted)

    axes = {'clip': (1, 2, 3), 'frame': (2, 3)}
    if self.attention_pool not in axes:
      raise ValueError(
          f"unknown attention_pool {self.attention_pool!r}; expected 'clip' or 'frame'")
    # The attention runs in float32 whatever the compute dtype: its squeeze is a mean over a
    # whole clip, and its MLP is tiny (float32 also spares the casts of its weights).
    channels, hidden = clip.shape[-1], squeeze_width(clip.shape[-1])
    squeezed = jnp.mean(conv + shifted, axis=axes[self.attention_pool], keepdims=True,
                        dtype=jnp.float32)
    squeeze = nn.Dense(hidden, dtype=jnp.float32, param_dtype=self.param_dtype, name='squeeze')
    z = nn.relu(squeeze(squeezed))
    # The two zero-initialised heads a_D, a_S enter only through softmax([a_D, a_S]), which
    # depends on a_D - a_S alone: one matmul with the difference of their weights.
    k_conv, b_conv = DenseParams(hidden, channels, self.param_dtype, name='attend_conv')()
    k_shift, b_shift = DenseParams(hidden, channels, self.param_dtype, name='attend_shift')()
    logit_difference = jnp.dot(z, k_conv - k_shift) + (b_conv - b_shift)
    return temporal_ops.fold_time(temporal_ops.attention_fuse(conv, shifted, logit_difference))


class DenseParams(nn.Module):
  """The zero-initialised kernel `[in_features, features]` and bias of a dense layer, returned
  rather than applied (CSTM combines its two attention heads before the matmul)."""
  in_features: int
  features: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self):
    zeros = nn.initializers.zeros_init()
    return (self.param('kernel', zeros, (self.in_features, self.features), self.param_dtype),
            self.param('bias', zeros, (self.features,), self.param_dtype))
