"""Temporal modules with random weights against NumPy references, and their initial behaviour."""
import jax
import numpy as np
import pytest

from cstm_jax.models import temporal_modules as tm
from test_temporal_ops import np_conv3d, np_shift, random_clips

N, T, H, W, C = 2, 4, 3, 3, 32
EPS = 1e-5


def fold(x):
  return x.reshape(-1, *x.shape[2:])


def randomize(tree, seed):
  """Random values for every leaf (positive for BN variances)."""
  rng = np.random.default_rng(seed)
  def draw(path, leaf):
    if path[-1].key == 'var':
      return rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
    return (rng.normal(size=leaf.shape) * 0.5).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, tree)


def init_random(module, x, seed=1):
  variables = module.init(jax.random.key(0), fold(x))
  return {k: randomize(v, seed + i) for i, (k, v) in enumerate(variables.items())}


def np_interleave(z):
  quarter = z.shape[-1] // 2
  out = np.empty_like(z)
  for i in range(quarter):
    for k in range(2):
      out[..., 2 * i + k] = z[..., k * quarter + i]
  return out


def np_gsm(x, variables, interleave):
  p, s = variables['params'], variables['batch_stats']['bn']
  bn = (x - s['mean']) / np.sqrt(s['var'] + EPS) * p['bn']['scale'] + p['bn']['bias']
  gate = np.tanh(np_conv3d(np.maximum(bn, 0), np.asarray(p['gate_kernel']), 2) + p['gate_bias'])
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  y1, y2 = gate[..., 0:1] * x1, gate[..., 1:2] * x2
  s1, s2 = np.zeros_like(y1), np.zeros_like(y2)
  s1[:, :-1] = y1[:, 1:]
  s2[:, 1:] = y2[:, :-1]
  z1, z2 = s1 + x1 - y1, s2 + x2 - y2
  if interleave:
    z1, z2 = np_interleave(z1), np_interleave(z2)
  return np.concatenate([z1, z2], -1)


def dense(p, x):
  return x @ np.asarray(p['kernel']) + np.asarray(p['bias'])


@pytest.mark.parametrize('interleave', [True, False])
def test_gsm_random_weights_match_numpy(interleave):
  x = random_clips(N, T, H, W, C)
  module = tm.GateShift(num_frames=T, gsm_interleave=interleave)
  variables = init_random(module, x)
  got = np.asarray(module.apply(variables, fold(x), train=False)).reshape(x.shape)
  np.testing.assert_allclose(got, np_gsm(x, variables, interleave), rtol=1e-4, atol=1e-4)


def test_gsm_starts_as_identity_up_to_interleave():
  x = random_clips(N, T, H, W, C)
  module = tm.GateShift(num_frames=T)
  variables = module.init(jax.random.key(0), fold(x))
  got = np.asarray(module.apply(variables, fold(x))).reshape(x.shape)
  half = C // 2
  expected = np.concatenate([np_interleave(x[..., :half]), np_interleave(x[..., half:])], -1)
  np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize('pool', ['clip', 'frame'])
def test_cstm_random_weights_match_numpy(pool):
  x = random_clips(N, T, H, W, C)
  module = tm.CSTM(num_frames=T, attention_pool=pool)
  variables = init_random(module, x)
  p = variables['params']
  conv = np_conv3d(x, np.asarray(p['conv3d']['kernel']), C // 16)
  shifted = np_shift(x)
  axes = (1, 2, 3) if pool == 'clip' else (2, 3)
  z = np.maximum(dense(p['squeeze'], (conv + shifted).mean(axis=axes, keepdims=True)), 0)
  a_conv, a_shift = dense(p['attend_conv'], z), dense(p['attend_shift'], z)
  alpha = np.exp(a_conv) / (np.exp(a_conv) + np.exp(a_shift))
  expected = alpha * conv + (1 - alpha) * shifted
  got = np.asarray(module.apply(variables, fold(x))).reshape(x.shape)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_gsm_attention_random_weights_match_numpy():
  x = random_clips(N, T, H, W, C)
  module = tm.GateShift(num_frames=T, attention=True)
  variables = init_random(module, x)
  gated = np_gsm(x, variables, interleave=True)
  p = variables['params']
  z = np.maximum(dense(p['squeeze'], gated.mean(axis=(1, 2, 3), keepdims=True)), 0)
  expected = gated / (1 + np.exp(-dense(p['excite'], z)))
  got = np.asarray(module.apply(variables, fold(x))).reshape(x.shape)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('mode', ['grouped', 'depthwise', 'full'])
def test_3d_branch_starts_as_identity(mode):
  x = random_clips(N, T, H, W, C)
  module = tm.Conv3DBranch(mode=mode)
  variables = module.init(jax.random.key(0), x)
  np.testing.assert_allclose(np.asarray(module.apply(variables, x)), x, atol=1e-6)
  kernel = variables['params']['kernel']
  assert kernel.shape == (3, 3, 3, C // tm.conv3d_groups(C, mode), C)


@pytest.mark.parametrize('pool', ['clip', 'frame'])
def test_cstm_at_init_is_half_input_half_shift(pool):
  x = random_clips(N, T, H, W, C)
  module = tm.CSTM(num_frames=T, attention_pool=pool)
  variables = module.init(jax.random.key(0), fold(x))
  got = np.asarray(module.apply(variables, fold(x))).reshape(x.shape)
  np.testing.assert_allclose(got, 0.5 * x + 0.5 * np_shift(x), rtol=1e-5, atol=1e-5)


def test_shift_sum_at_init_is_input_plus_shift():
  x = random_clips(N, T, H, W, C)
  module = tm.CSTM(num_frames=T, attention=False)
  variables = module.init(jax.random.key(0), fold(x))
  got = np.asarray(module.apply(variables, fold(x))).reshape(x.shape)
  np.testing.assert_allclose(got, x + np_shift(x), rtol=1e-5, atol=1e-5)


def test_cstm_with_gsm_shift_uses_the_gate_shift():
  x = random_clips(N, T, H, W, C)
  module = tm.CSTM(num_frames=T, cstm_shift='gsm', gsm_interleave=False)
  variables = init_random(module, x)
  # With the attention heads zeroed the fusion is an even mix of D(X) and GSM(X).
  for head in ('attend_conv', 'attend_shift'):
    variables['params'][head] = jax.tree_util.tree_map(np.zeros_like, variables['params'][head])
  gsm_vars = {'params': variables['params']['gsm'], 'batch_stats': variables['batch_stats']['gsm']}
  conv = np_conv3d(x, np.asarray(variables['params']['conv3d']['kernel']), C // 16)
  expected = 0.5 * conv + 0.5 * np_gsm(x, gsm_vars, interleave=False)
  got = np.asarray(module.apply(variables, fold(x))).reshape(x.shape)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_bad_options_are_refused():
  with pytest.raises(ValueError, match='unknown conv3d_grouping'):
    tm.conv3d_groups(32, 'sparse')
  x = fold(random_clips(N, T, H, W, C))
  with pytest.raises(ValueError, match='unknown attention_pool'):
    tm.CSTM(num_frames=T, attention_pool='pixel').init(jax.random.key(0), x)
  with pytest.raises(ValueError, match='unknown cstm_shift'):
    tm.CSTM(num_frames=T, cstm_shift='tam').init(jax.random.key(0), x)
