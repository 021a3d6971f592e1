"""Temporal ops against plain NumPy references written here."""
import numpy as np
import pytest

from cstm_jax.models import temporal_ops
from cstm_jax.models.temporal_modules import TemporalShift

IMPLS = ['roll', 'slice']


def np_shift(x, shift_div=8):
  """TSM reference: channels [0, f) from frame t+1, [f, 2f) from frame t-1, zero past the clip."""
  f = x.shape[-1] // shift_div
  out = x.copy()
  out[..., :2 * f] = 0
  out[:, :-1, ..., :f] = x[:, 1:, ..., :f]
  out[:, 1:, ..., f:2 * f] = x[:, :-1, ..., f:2 * f]
  return out


def random_clips(n=3, t=5, h=4, w=3, c=16, seed=0):
  return np.random.default_rng(seed).normal(size=(n, t, h, w, c)).astype(np.float32)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('t', [1, 2, 5])
def test_shift_matches_numpy(impl, t):
  x = random_clips(t=t)
  got = np.asarray(temporal_ops.temporal_shift(x, 8, impl))
  np.testing.assert_array_equal(got, np_shift(x))
  f = x.shape[-1] // 8
  # Border frames of the shifted channels are zero; the rest of the channels are untouched.
  np.testing.assert_array_equal(got[:, -1, ..., :f], 0)
  np.testing.assert_array_equal(got[:, 0, ..., f:2 * f], 0)
  np.testing.assert_array_equal(got[..., 2 * f:], x[..., 2 * f:])
  if t == 1:
    np.testing.assert_array_equal(got[..., :2 * f], 0)


@pytest.mark.parametrize('impl', IMPLS)
def test_shift_never_crosses_clips(impl):
  """Folded frames `[N*T, ...]`: changing one clip changes no other clip's output."""
  n, t = 3, 4
  x = random_clips(n=n, t=t)
  module = TemporalShift(num_frames=t, shift_impl=impl)
  fold = lambda a: a.reshape(n * t, *a.shape[2:])
  base = np.asarray(module.apply({}, fold(x))).reshape(x.shape)
  changed = x.copy()
  changed[1] += 100.0
  out = np.asarray(module.apply({}, fold(changed))).reshape(x.shape)
  np.testing.assert_array_equal(out[0], base[0])
  np.testing.assert_array_equal(out[2], base[2])
  np.testing.assert_array_equal(base, np_shift(x))


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('offset', [-2, -1, 1, 2, 7])
def test_shift_frames(impl, offset):
  x = random_clips(t=5)
  expected = np.zeros_like(x)
  for t in range(5):
    if 0 <= t + offset < 5:
      expected[:, t] = x[:, t + offset]
  np.testing.assert_array_equal(np.asarray(temporal_ops.shift_frames(x, offset, impl)), expected)


def test_interleave_halves():
  x = np.arange(2 * 12, dtype=np.float32).reshape(2, 12)
  got = np.asarray(temporal_ops.interleave_halves(x))
  quarter = 12 // 2
  for i in range(quarter):
    for k in range(2):
      np.testing.assert_array_equal(got[:, 2 * i + k], x[:, k * quarter + i])


def np_conv3d(x, kernel, groups):
  """Naive grouped 3D conv, stride 1, zero padding k//2: x [N,T,H,W,C], kernel [kt,kh,kw,C/g,O]."""
  kt, kh, kw, cin_g, cout = kernel.shape
  n, t, h, w, _ = x.shape
  padded = np.pad(x, [(0, 0), (kt // 2,) * 2, (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)])
  out = np.zeros((n, t, h, w, cout), np.float64)
  cout_g = cout // groups
  for g in range(groups):
    xin = padded[..., g * cin_g:(g + 1) * cin_g]
    outs = slice(g * cout_g, (g + 1) * cout_g)
    for a in range(kt):
      for b in range(kh):
        for c in range(kw):
          out[..., outs] += xin[:, a:a + t, b:b + h, c:c + w] @ kernel[a, b, c, :, outs]
  return out.astype(np.float32)


@pytest.mark.parametrize('groups', [1, 2, 8, 16])  # 8: above CPU_UNROLLED_GROUPS
def test_conv3d_matches_numpy(groups):
  x = random_clips(n=2, t=3, c=16)
  kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 16 // groups, 16)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(temporal_ops.conv3d(x, kernel, groups)),
                             np_conv3d(x, kernel, groups), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('groups', [2, 8])
def test_cpu_and_tpu_ways_have_the_native_grouped_convs_gradients(groups):
  """On CPU a grouped conv runs as dense convs (one per group, or one block-diagonal), on TPU as
  a grouped 2D conv over stacked temporal taps; values and gradients equal XLA's grouped 3D
  conv, which GPUs run."""
  import jax
  import jax.numpy as jnp
  assert (groups > temporal_ops.CPU_UNROLLED_GROUPS) == (groups == 8)
  x = jnp.asarray(random_clips(n=2, t=3, c=16))
  kernel = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 3, 16 // groups, 16)),
                       jnp.float32)
  value_and_grad = lambda conv: jax.value_and_grad(
      lambda x, k: jnp.sum(jnp.sin(conv(x, k, groups))), argnums=(0, 1))(x, kernel)
  native = value_and_grad(temporal_ops.xla_conv3d)
  for way in (temporal_ops.conv3d, temporal_ops.tpu_grouped_conv3d):  # conv3d: the CPU's way here
    for got, want in zip(jax.tree.leaves(value_and_grad(way)), jax.tree.leaves(native)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('groups', [1, 4, 16])
def test_identity_centre_kernel(groups):
  x = random_clips(c=16)
  kernel = temporal_ops.identity_centre_kernel(16, groups)
  np.testing.assert_allclose(np.asarray(temporal_ops.conv3d(x, kernel, groups)), x, atol=1e-6)


def test_gate_shift_with_fixed_gate():
  """gate = 1 moves whole halves (a pure shift); gate = 0 leaves the input in place."""
  x = random_clips(c=8)
  half = 4
  ones = np.ones(x.shape[:-1] + (2,), np.float32)
  moved = np.asarray(temporal_ops.gate_shift(x, ones, interleave=False))
  np.testing.assert_array_equal(moved[:, :-1, ..., :half], x[:, 1:, ..., :half])
  np.testing.assert_array_equal(moved[:, -1, ..., :half], 0)
  np.testing.assert_array_equal(moved[:, 1:, ..., half:], x[:, :-1, ..., half:])
  np.testing.assert_array_equal(moved[:, 0, ..., half:], 0)
  still = np.asarray(temporal_ops.gate_shift(x, np.zeros_like(ones), interleave=False))
  np.testing.assert_array_equal(still, x)


def test_attention_fuse_is_a_two_way_softmax():
  rng = np.random.default_rng(0)
  a, b = (rng.normal(size=(2, 3, 5)).astype(np.float32) for _ in range(2))
  logits = rng.normal(size=(2, 2, 1, 5)).astype(np.float32) * 3
  alpha = np.exp(logits[0]) / np.exp(logits).sum(axis=0)
  got = np.asarray(temporal_ops.attention_fuse(a, b, logits[0] - logits[1]))
  np.testing.assert_allclose(got, alpha * a + (1 - alpha) * b, rtol=1e-5, atol=1e-6)


def test_unfold_rejects_partial_clips():
  with pytest.raises(ValueError, match='not a multiple of num_frames=4'):
    temporal_ops.unfold_time(np.zeros((6, 2, 2, 8)), 4)


@pytest.mark.parametrize('groups', [2, 4])
def test_grouped_conv3d_splits_over_a_sharded_batch(groups):
  # XLA's partitioner alone would gather the whole batch onto every device for a grouped conv.
  import jax
  from jax.sharding import NamedSharding, PartitionSpec as P
  from cstm_jax.distributed import sharding
  mesh = sharding.make_mesh(1)  # 8 CPU devices on `data`
  x = np.random.default_rng(0).normal(size=(8, 3, 4, 4, 8)).astype(np.float32)
  kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 8 // groups, 8)).astype(np.float32)
  conv = jax.jit(lambda x, k: temporal_ops.conv3d(x, k, groups),
                 in_shardings=(NamedSharding(mesh, P('data')), NamedSharding(mesh, P())))
  with jax.set_mesh(mesh):
    hlo = conv.lower(x, kernel).compile().as_text()
    out = conv(x, kernel)
  assert 'all-gather' not in hlo
  np.testing.assert_allclose(out, temporal_ops.conv3d(x, kernel, groups), rtol=1e-5, atol=1e-5)


def test_gated_has_the_product_rule_gradients_summed_in_float32():
  import jax
  import jax.numpy as jnp
  x = jnp.asarray(random_clips(n=2, t=3, c=8))
  gate = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 1, 1, 1, 8)), jnp.float32)
  plain = lambda x, g: jnp.sum(jnp.sin(x * g))
  ours = lambda x, g: jnp.sum(jnp.sin(temporal_ops.gated(x, g)))
  for want, got in zip(jax.grad(plain, (0, 1))(x, gate), jax.grad(ours, (0, 1))(x, gate)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  grad_gate = jax.grad(ours, 1)(x.astype(jnp.bfloat16), gate)
  assert grad_gate.dtype == jnp.float32 and grad_gate.shape == gate.shape


@pytest.mark.parametrize('impl', IMPLS)
def test_channel_temporal_conv_matches_numpy(impl):
  """STM's per-channel conv over time: zero padding at both ends of the clip, taps t-1, t, t+1."""
  rng = np.random.default_rng(0)
  clip = rng.normal(size=(2, 5, 3, 3, 4)).astype(np.float32)
  kernel = rng.normal(size=(3, 4)).astype(np.float32)
  padded = np.pad(clip, [(0, 0), (1, 1), (0, 0), (0, 0), (0, 0)])
  expected = sum(kernel[k] * padded[:, k:k + 5] for k in range(3))
  np.testing.assert_allclose(temporal_ops.channel_temporal_conv(clip, kernel, impl), expected,
                             rtol=1e-5, atol=1e-6)
