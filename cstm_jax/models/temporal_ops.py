"""Pure temporal ops on clip tensors.

Shapes: a clip tensor is `[N, T, H, W, C]`; frames folded into the batch are `[N*T, H, W, C]`,
clip-major (the T frames of one clip are contiguous). Every op here is a pure, traceable
function: no parameters, no in-place updates (so `jax.export` and ONNX-style tracing work).
"""
import contextlib
import contextvars
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

ShiftImpl = Literal['roll', 'slice']


def unfold_time(x: jax.Array, num_frames: int) -> jax.Array:
  """`[N*T, ...]` -> `[N, T, ...]`."""
  if x.shape[0] % num_frames:
    raise ValueError(f'batch of {x.shape[0]} frames is not a multiple of num_frames={num_frames}')
  return x.reshape(x.shape[0] // num_frames, num_frames, *x.shape[1:])


def fold_time(x: jax.Array) -> jax.Array:
  """`[N, T, ...]` -> `[N*T, ...]`."""
  return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def shift_frames(x: jax.Array, offset: int, impl: ShiftImpl = 'roll') -> jax.Array:
  """Frame `t` of the result takes frame `t + offset` of `x`; frames past the clip are zero.

  Args:
    x: `[N, T, ...]`.
    offset: +1 pulls from the next frame (moves features toward the past), -1 from the previous.
    impl: 'roll' (jnp.roll, then zero the wrapped frames) or 'slice' (slice plus zero pad).
  Returns:
    `[N, T, ...]`, same dtype.
  """
  num_frames = x.shape[1]
  if offset == 0:
    return x
  if abs(offset) >= num_frames:
    return jnp.zeros_like(x)
  if impl == 'roll':
    rolled = jnp.roll(x, -offset, axis=1)
    t = np.arange(num_frames)
    valid = (t + offset >= 0) & (t + offset < num_frames)  # static mask, folded by XLA
    mask = jnp.asarray(valid, x.dtype).reshape((1, num_frames) + (1,) * (x.ndim - 2))
    return rolled * mask
  if impl == 'slice':
    pad = [(0, 0)] * x.ndim
    if offset > 0:
      pad[1] = (0, offset)
      return jnp.pad(x[:, offset:], pad)
    pad[1] = (-offset, 0)
    return jnp.pad(x[:, :offset], pad)
  raise ValueError(f"unknown shift impl {impl!r}; expected 'roll' or 'slice'")


def channel_temporal_conv(clip: jax.Array, kernel: jax.Array,
                          impl: ShiftImpl = 'roll') -> jax.Array:
  """Depthwise kernel-3 conv over time, zero-padded (STM's channel-wise temporal conv):
  `out[t] = k0 x[t-1] + k1 x[t] + k2 x[t+1]` per channel.

  Args:
    clip: `[N, T, ..., C]`.
    kernel: `[3, C]`, the taps for frames t-1, t and t+1.
    impl: how the neighbouring frames are taken ('roll' or 'slice').
  Returns:
    `[N, T, ..., C]`, `clip`'s dtype.
  """
  k = kernel.astype(clip.dtype)
  return k[0] * shift_frames(clip, -1, impl) + k[1] * clip + k[2] * shift_frames(clip, 1, impl)


def temporal_shift(x: jax.Array, shift_div: int = 8, impl: ShiftImpl = 'roll') -> jax.Array:
  """TSM shift S(X): channels [0, f) take frame t+1, [f, 2f) take frame t-1, f = C // shift_div.

  Args:
    x: `[N, T, H, W, C]`.
  Returns:
    `[N, T, H, W, C]`; zero where a shifted channel would cross a clip border.
  """
  fold = x.shape[-1] // shift_div
  if fold == 0:
    return x
  return jnp.concatenate([
      shift_frames(x[..., :fold], +1, impl),
      shift_frames(x[..., fold:2 * fold], -1, impl),
      x[..., 2 * fold:],
  ], axis=-1)


def interleave_halves(x: jax.Array) -> jax.Array:
  """The GSM reference's channel order inside one half: new channel 2i+k = old channel k*C/2+i.

  Args:
    x: `[..., C]` with C even (C is the width of one half of the GSM input).
  """
  channels = x.shape[-1]
  if channels % 2:
    raise ValueError(f'interleave needs an even channel count, got {channels}')
  split = x.reshape(*x.shape[:-1], 2, channels // 2)
  return jnp.swapaxes(split, -1, -2).reshape(x.shape)


def gate_shift(x: jax.Array, gate: jax.Array, interleave: bool = True,
               impl: ShiftImpl = 'roll') -> jax.Array:
  """GSM fusion of a clip with its two-channel gate.

  X is split in halves X1, X2 gated by G[..., 0] and G[..., 1]; the gated part of X1 moves
  toward the past (frame t takes t+1), of X2 toward the future (frame t takes t-1); the
  ungated residual stays in place.

  Args:
    x: `[N, T, H, W, C]`, C divisible by 2 (by 4 with interleave).
    gate: `[N, T, H, W, 2]`, values in [-1, 1] (tanh).
  Returns:
    `[N, T, H, W, C]`.
  """
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  y1 = gate[..., 0:1] * x1
  y2 = gate[..., 1:2] * x2
  z1 = shift_frames(y1, +1, impl) + (x1 - y1)
  z2 = shift_frames(y2, -1, impl) + (x2 - y2)
  if interleave:
    z1, z2 = interleave_halves(z1), interleave_halves(z2)
  return jnp.concatenate([z1, z2], axis=-1)


def conv3d(x: jax.Array, kernel: jax.Array, groups: int = 1) -> jax.Array:
  """3x3x3 (any odd size) convolution over (T, H, W), stride 1, zero 'same' padding.

  Args:
    x: `[N, T, H, W, C_in]`.
    kernel: `[kt, kh, kw, C_in // groups, C_out]`.
    groups: feature groups (C_in for depthwise, 1 for full).
  Returns:
    `[N, T, H, W, C_out]`.
  """
  if not 1 < groups < x.shape[-1]:
    return xla_conv3d(x, kernel, groups)
  # Each platform gets the way its compiler handles best. XLA:CPU runs grouped convolutions
  # through a slow generic loop (its backward 2-6x slower than dense convs), so the CPU runs
  # them as dense convs (`cpu_grouped_conv3d`). The TPU compiler takes far longer over a
  # grouped 3D conv than over a grouped 2D conv of the same work (`tpu_grouped_conv3d`). GPUs
  # run XLA's grouped 3D conv. When a mesh is set the target is known and only its way is
  # traced; without one (a multi-platform export) all are, and the platform picks when the
  # function runs.
  ways = {'cpu': lambda x, kernel: cpu_grouped_conv3d(x, kernel, groups),
          'tpu': lambda x, kernel: tpu_grouped_conv3d(x, kernel, groups)}
  native = lambda x, kernel: xla_conv3d(x, kernel, groups)
  platform = target_platform()
  if _NATIVE_GROUPED_CONVS.get():
    grouped = native
  elif platform is not None:
    grouped = ways.get(platform, native)
  else:
    grouped = lambda x, kernel: jax.lax.platform_dependent(x, kernel, **ways, default=native)
  return per_batch_shard(grouped)(x, kernel)


def xla_conv3d(x: jax.Array, kernel: jax.Array, groups: int = 1) -> jax.Array:
  """`conv3d` as one XLA convolution (`feature_group_count=groups`), whatever the platform."""
  padding = [(k // 2, k // 2) for k in kernel.shape[:3]]
  return jax.lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(1, 1, 1), padding=padding,
      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'), feature_group_count=groups)


# On CPU, grouped 3D convs of up to this many groups are unrolled into one dense conv per group;
# above it, one block-diagonal dense conv (docs/benchmarks.md, "Compile time").
CPU_UNROLLED_GROUPS = 4


def cpu_grouped_conv3d(x: jax.Array, kernel: jax.Array, groups: int) -> jax.Array:
  """`conv3d` as the CPU runs a grouped conv: up to `CPU_UNROLLED_GROUPS` groups as one dense
  conv each (`one_conv_per_group`); more as one dense conv with a block-diagonal kernel
  (`groups` times the FLOPs, but one conv to compile instead of three per group)."""
  if groups > CPU_UNROLLED_GROUPS:
    return xla_conv3d(x, block_diagonal(kernel, groups))
  return one_conv_per_group(x, kernel, groups)


def one_conv_per_group(x: jax.Array, kernel: jax.Array, groups: int) -> jax.Array:
  """`conv3d` as `groups` dense convs, one per group, concatenated."""
  pairs = zip(jnp.split(x, groups, axis=-1), jnp.split(kernel, groups, axis=-1))
  return jnp.concatenate([xla_conv3d(a, b) for a, b in pairs], axis=-1)


def block_diagonal(kernel: jax.Array, groups: int) -> jax.Array:
  """Grouped kernel `[kt, kh, kw, C_in // groups, C_out]` -> dense `[kt, kh, kw, C_in, C_out]`,
  zero outside the groups' diagonal blocks (a dense conv with it equals the grouped conv)."""
  kt, kh, kw, per_group, out = kernel.shape
  split = kernel.reshape(kt, kh, kw, per_group, groups, out // groups)
  dense = jnp.einsum('dhwigo,gG->dhwGigo', split, jnp.eye(groups, dtype=kernel.dtype))
  return dense.reshape(kt, kh, kw, groups * per_group, out)


def tpu_grouped_conv3d(x: jax.Array, kernel: jax.Array, groups: int) -> jax.Array:
  """`conv3d` as one grouped 2D conv over (H, W): each group's input channels are stacked with
  their copies from the neighbouring frames (the kernel's temporal taps, zero past the clip), so
  the temporal sum becomes part of the channel sum. The same multiply-adds as the grouped 3D
  conv, and the input read `kt` times."""
  kt, kh, kw, per_group, out = kernel.shape
  n, t, h, w, _ = x.shape
  taps = jnp.stack([shift_frames(x, d - kt // 2) for d in range(kt)], axis=-2)
  # Channels ordered (group, tap, channel of the group), as the kernel's (tap, channel).
  taps = taps.reshape(n * t, h, w, kt, groups, per_group).swapaxes(3, 4)
  taps = taps.reshape(n * t, h, w, groups * kt * per_group)
  kernel2d = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * per_group, out)
  y = jax.lax.conv_general_dilated(
      taps, kernel2d.astype(x.dtype), window_strides=(1, 1),
      padding=[(kh // 2, kh // 2), (kw // 2, kw // 2)],
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)
  return y.reshape(n, t, h, w, out)


_NATIVE_GROUPED_CONVS = contextvars.ContextVar('native_grouped_convs', default=False)


@contextlib.contextmanager
def native_grouped_convs():
  """Inside, grouped 3D convs trace as XLA's grouped conv whatever the platform, as GPUs run
  them: the way to count a model's FLOPs on a CPU, whose block-diagonal convs would count their
  zeros too."""
  token = _NATIVE_GROUPED_CONVS.set(True)
  try:
    yield
  finally:
    _NATIVE_GROUPED_CONVS.reset(token)


def target_platform() -> str | None:
  """The platform ('cpu', 'gpu', 'tpu', ...) of the mesh set with `jax.set_mesh` (what the step
  builders of `cstm_jax/train/steps.py` compile for), or None when no mesh is set."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, 'abstract_device', None)
  return device.platform if device is not None else None


def per_batch_shard(fn):
  """`fn(x, *weights)` run on each device's share of the batch of `x` when a mesh with a `data`
  axis is set (`jax.set_mesh`), `weights` whole; plain `fn` otherwise.

  XLA's SPMD partitioner does not split a grouped convolution (1 < groups < channels) along a
  sharded batch: it gathers the whole batch onto every device and computes it there. The step
  builders of `cstm_jax/train/steps.py` always set the mesh; a step jitted by hand must set it too
  (`with jax.set_mesh(mesh):` around the call or `.lower`).
  """

  def wrapped(x, *weights):
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.shape.get('data', 1) == 1 or x.shape[0] % mesh.shape['data']:
      return fn(x, *weights)
    specs = (P('data'),) + (P(),) * len(weights)
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P('data'),
                         axis_names={'data'}, check_vma=False)(x, *weights)

  return wrapped


def identity_centre_kernel(channels: int, groups: int, size: int = 3,
                           dtype=jnp.float32) -> jax.Array:
  """Kernel `[size]*3 + [channels // groups, channels]` with `conv3d(x, k, groups) == x`."""
  per_group = channels // groups
  kernel = np.zeros((size, size, size, per_group, channels), np.float32)
  centre = size // 2
  out = np.arange(channels)
  kernel[centre, centre, centre, out % per_group, out] = 1.0
  return jnp.asarray(kernel, dtype)


def attention_fuse(a: jax.Array, b: jax.Array, logit_difference: jax.Array) -> jax.Array:
  """`alpha_a * a + alpha_b * b` with `[alpha_a, alpha_b] = softmax([l_a, l_b])` per channel.

  A softmax across two branches is `alpha_a = sigmoid(l_a - l_b)`, `alpha_b = 1 - alpha_a`, so
  only the difference of the logits is needed (one small matmul instead of two, no stacking).

  Args:
    a, b: the branches, e.g. `[N, T, H, W, C]`.
    logit_difference: `l_a - l_b`, broadcastable to `a` with the same rank (e.g.
      `[N, 1, 1, 1, C]`), float32 (the attention's gradient is summed in float32).
  """
  return b + gated(a - b, jax.nn.sigmoid(logit_difference))


@jax.custom_vjp
def gated(x: jax.Array, gate: jax.Array) -> jax.Array:
  """`x * gate`, `gate` (float32) broadcast over `x` (same rank), computed in `x`'s dtype; the
  gate's gradient, a sum over the broadcast axes (a whole clip for CSTM's and GSM's attention),
  is accumulated in float32 whatever `x`'s dtype."""
  return x * gate.astype(x.dtype)


def _gated_forward(x, gate):
  return gated(x, gate), (x, gate)


def _gated_backward(residuals, grad):
  x, gate = residuals
  broadcast = tuple(i for i, (n, m) in enumerate(zip(x.shape, gate.shape)) if m == 1 < n)
  grad_gate = jnp.sum(grad.astype(jnp.float32) * x.astype(jnp.float32), axis=broadcast,
                      keepdims=True)
  return grad * gate.astype(grad.dtype), grad_gate.astype(gate.dtype)


gated.defvjp(_gated_forward, _gated_backward)
