"""How fast the backend runs CSTM's grouped 3x3x3 convolution, three ways.

  python -m tools.grouped_conv_benchmark

On CSTM layer shapes (batch 4, 8 frames, groups of 16 channels): XLA's grouped convolution
(`feature_group_count`), one dense 3D conv per group and one dense 3D conv with a
block-diagonal kernel (what `temporal.ops.conv3d` lowers to on CPU, up to and above
`CPU_UNROLLED_GROUPS` groups), and, for scale, a dense 3x3 2D conv of the same layer. Median
of 5 runs after a warm-up, forward and forward + backward, in milliseconds; a markdown table on
stdout.
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp

from cstm_foundation import cli_flags
from cstm_jax.models import temporal_ops

SHAPES = ((4, 8, 16, 16, 64), (4, 8, 8, 8, 224), (4, 8, 4, 4, 352))  # [N, T, H, W, C]
GROUP_WIDTH = 16


def conv2d(x, kernel):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def block_diagonal_conv3d(x, kernel, groups):
  return temporal_ops.xla_conv3d(x, temporal_ops.block_diagonal(kernel, groups))


def median_ms(fn, *args) -> float:
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(5):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * statistics.median(times)


def main(argv=None) -> int:
  cli_flags.parse(argv, __doc__, lambda flag_values: None)  # no flags: --help, and no typos
  print(f'{jax.devices()[0].device_kind}, jax {jax.__version__}\n')
  print('| layer [N, T, H, W, C] | groups | way | forward (ms) | forward + backward (ms) |')
  print('|---|---|---|---|---|')
  for shape in SHAPES:
    channels = shape[-1]
    groups = channels // GROUP_WIDTH
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, GROUP_WIDTH, channels))
    frames = x.reshape(-1, *shape[2:])
    kernel_2d = jax.random.normal(jax.random.key(2), (3, 3, channels, channels))
    ways = (('XLA grouped 3D conv', temporal_ops.xla_conv3d, x, kernel, groups),
            ('one dense 3D conv per group', temporal_ops.one_conv_per_group, x, kernel, groups),
            ('block-diagonal dense 3D conv', block_diagonal_conv3d, x, kernel, groups),
            ('dense 3x3 2D conv (scale)', lambda a, k, g: conv2d(a, k), frames, kernel_2d, 1))
    for name, fn, a, k, g in ways:
      forward = lambda a, k, fn=fn, g=g: fn(a, k, g)
      backward = jax.grad(lambda a, k, f=forward: jnp.sum(f(a, k) ** 2), argnums=(0, 1))
      print(f'| {list(shape)} | {g} | {name} | {median_ms(forward, a, k):.1f} '
            f'| {median_ms(backward, a, k):.1f} |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
