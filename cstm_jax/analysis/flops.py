"""Multiply-adds counted by XLA.

XLA's cost analysis skips the kernel taps that fall on a conv's zero padding, so on a 7x7 map
a 3x3 conv counts 19/21 of its taps per axis, and a 3x3x3 conv on a single frame only 1/3.
Papers (and the reference figures in tests/test_models.py) count every tap.
`count_macs(..., dense=True)` therefore rewrites each padded convolution as an explicit zero pad
plus an unpadded convolution -- the same function -- before asking XLA, so XLA counts the dense
multiply-adds;
`dense=False` gives XLA's count of the graph as it runs.
"""
from typing import Any, Callable

import jax
from jax import lax
from jax.extend import core

from cstm_jax.models import temporal_ops


def _dense_conv(lhs, rhs, *, padding, lhs_dilation, dimension_numbers, **params):
  """conv_general_dilated with its padding moved into an explicit lax.pad of the input."""
  if any(d != 1 for d in lhs_dilation) or not any(lo or hi for lo, hi in padding):
    return lax.conv_general_dilated_p.bind(lhs, rhs, padding=padding, lhs_dilation=lhs_dilation,
                                           dimension_numbers=dimension_numbers, **params)
  config = [(0, 0, 0)] * lhs.ndim
  for axis, (lo, hi) in zip(dimension_numbers.lhs_spec[2:], padding):
    config[axis] = (lo, hi, 0)
  lhs = lax.pad(lhs, lax.full((), 0, lhs.dtype), config)
  return lax.conv_general_dilated_p.bind(
      lhs, rhs, padding=tuple((0, 0) for _ in padding), lhs_dilation=lhs_dilation,
      dimension_numbers=dimension_numbers, **params)


def _eval_dense(jaxpr: core.Jaxpr, consts, *args):
  """Evaluates a jaxpr with every padded convolution made explicit (recursing into jit calls)."""
  env = {}
  read = lambda v: v.val if isinstance(v, core.Literal) else env[v]
  for var, value in zip(jaxpr.constvars, consts):
    env[var] = value
  for var, value in zip(jaxpr.invars, args):
    env[var] = value
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    if eqn.primitive is lax.conv_general_dilated_p:
      outvals = [_dense_conv(*invals, **eqn.params)]
    elif eqn.primitive.name in ('jit', 'pjit'):
      inner = eqn.params['jaxpr']
      outvals = _eval_dense(inner.jaxpr, inner.consts, *invals)
    elif eqn.primitive.name == 'cond':  # e.g. lax.platform_dependent: rewrite every branch
      branches = tuple(_dense_closed(branch) for branch in eqn.params['branches'])
      outvals = eqn.primitive.bind(*invals, **{**eqn.params, 'branches': branches})
    else:
      outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outvals = [outvals]
    for var, value in zip(eqn.outvars, outvals):
      env[var] = value
  return [read(v) for v in jaxpr.outvars]


def _dense_closed(closed: core.ClosedJaxpr) -> core.ClosedJaxpr:
  avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
  return jax.make_jaxpr(lambda *a: _eval_dense(closed.jaxpr, closed.consts, *a))(*avals)


def count_macs(fn: Callable[..., Any], *args, dense: bool = True) -> float:
  """Multiply-adds of `fn(*args)` from XLA's cost analysis (FLOPs / 2).

  `args` may be `jax.ShapeDtypeStruct`s: nothing is computed or allocated. Elementwise work
  (BatchNorm, ReLU, pools) is included, as XLA counts it; it adds about 1-2% to a CNN.
  Grouped convs count as GPUs run them (`temporal_ops.native_grouped_convs`; TPUs' way does the same
  multiply-adds).
  """
  with temporal_ops.native_grouped_convs():
    if dense:
      closed = jax.make_jaxpr(fn)(*args)
      flat_args = jax.tree_util.tree_leaves(args)
      lowered = jax.jit(lambda *a: _eval_dense(closed.jaxpr, closed.consts, *a)).lower(
          *flat_args)
    else:
      lowered = jax.jit(fn).lower(*args)
  return lowered.cost_analysis()['flops'] / 2
