"""On a GPU: does `xla.gpu_conv_nhwc` (channels-last convolutions) compute the same training?

  python -m tools.conv_layout_check [--model cstm_bninception] [--width 0.25]
      [--json layout.json]

Runs the eval-mode forward, the loss gradient and one training step of a randomly initialised
model on one random batch, with XLA:GPU's default convolution layouts and with channels-last
forced, in float32 with full-precision matmuls and convolutions (no TF32). It compares what a
user relies on, array by array: the eval logits, the loss, the BatchNorm statistics after the
step, the gradient and the parameter update (new - old) of every parameter array. An array whose
gradient is zero in exact arithmetic (a conv bias right before a train-mode BatchNorm, which
removes any per-channel constant) has a gradient of rounding noise in both layouts, and so an
update of noise that no two programs reproduce: such arrays are named and listed with their
difference, and left out of the verdict. Exits 1 when anything else differs by more than
`--tolerance` relative to its norm.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.commands import run_main
from cstm_jax.analysis import benchmark
from cstm_jax.config.zoo import MODELS
from cstm_jax.distributed import sharding
from cstm_jax.models.video import normalise
from cstm_jax.train import program as program_lib, steps, train_state

# A gradient array whose root-mean-square is below this fraction of the whole gradient's is
# zero up to rounding (measured: conv biases before a BatchNorm sit near 1e-7).
ZERO_GRADIENT = 1e-4
COMPARED = ('eval_logits', 'loss', 'batch_stats_after_step', 'gradient', 'update')


def relative_difference(a, b) -> float:
  """||a - b|| / ||b|| (0 when both are 0)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = np.linalg.norm(b)
  diff = np.linalg.norm(a - b)
  return float(diff / scale) if scale > 0 else (0.0 if diff == 0 else float('inf'))


def _rms(x) -> float:
  x = np.asarray(x, np.float64)
  return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def zero_gradient_arrays(gradient) -> set:
  """Paths of the parameter arrays whose gradient is zero up to rounding."""
  leaves = jax.tree_util.tree_leaves_with_path(gradient)
  whole = np.concatenate([np.ravel(np.asarray(g, np.float64)) for _, g in leaves])
  threshold = ZERO_GRADIENT * _rms(whole)
  return {jax.tree_util.keystr(path) for path, g in leaves if _rms(g) <= threshold}


def compare(default: dict, other: dict, tolerance: float) -> dict:
  """Array-by-array comparison of two `outputs`: {'rows': [{output, array, difference,
  zero_gradient, differs}], 'differing': rows over `tolerance` that count, 'noise': rows over
  it whose gradient is zero, 'holds': no counting row differs}."""
  zero = zero_gradient_arrays(default['gradient'])
  rows = []
  for name in COMPARED:
    leaves = jax.tree_util.tree_leaves_with_path(default[name])
    for (path, b), a in zip(leaves, jax.tree_util.tree_leaves(other[name])):
      array = jax.tree_util.keystr(path)
      is_zero = name in ('gradient', 'update') and array in zero
      diff = relative_difference(a, b)
      rows.append({'output': name, 'array': array or '(scalar)', 'difference': diff,
                   'zero_gradient': is_zero, 'differs': diff > tolerance})
  differing = [r for r in rows if r['differs'] and not r['zero_gradient']]
  noise = [r for r in rows if r['differs'] and r['zero_gradient']]
  return {'rows': rows, 'differing': differing, 'noise': noise, 'holds': not differing,
          'zero_gradient_arrays': sorted(zero), 'tolerance': tolerance}


def outputs(program, *, batch, seed: int = 0) -> dict:
  """The compared outputs of `program` (channels-last convolutions forced when its config's
  `xla.gpu_conv_nhwc` is set)."""
  model, mesh, input_norm = program.model, program.mesh, program.input_norm
  state = program.init_state(jax.random.key(seed))
  variables = train_state.variables_of(state)
  logits, _ = program.eval_step(variables, {'clips': batch['clips'][:, None]})

  def loss(params, batch_stats, clips, labels):
    out, _ = model.apply({'params': params, 'batch_stats': batch_stats},
                         normalise(clips, input_norm), train=True, mutable=['batch_stats'],
                         rngs={'dropout': jax.random.key(1)})
    return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

  options = sharding.compiler_options(mesh, program.config.xla.gpu_conv_nhwc)
  gradient = steps.MeshStep(jax.jit(jax.grad(loss), compiler_options=options), mesh)(
      state.params, state.batch_stats, batch['clips'], batch['labels'])
  before = jax.device_get(state.params)  # the step donates the state
  new_state, metrics = program.train_step(state, batch, jax.random.key(1))
  after = jax.device_get(new_state.params)
  return {'eval_logits': jax.device_get(logits), 'loss': jax.device_get(metrics['loss']),
          'batch_stats_after_step': jax.device_get(new_state.batch_stats),
          'gradient': jax.device_get(gradient),
          'update': jax.tree_util.tree_map(lambda new, old: np.asarray(new) - np.asarray(old),
                                           after, before)}


def check(*, model_name: str = 'cstm_bninception', width: float = 0.25, frames: int = 4,
          crop: int = 224, batch_size: int = 2, tolerance: float = 1e-4) -> dict:
  """Both layouts on one device, compared (`compare`), with the setting and the device. The
  steps are the training program's (`train/program.py`) with the base config's optimizer."""
  key = jax.random.key(42)
  clips_shape = (batch_size, frames, crop, crop, 3)
  programs = []
  for nhwc in (False, True):
    config = benchmark.setting_config(benchmark.Setting(
        model_name, frames, crop, batch_size, 'float32', 'train', width=width, gpu_conv_nhwc=nhwc))
    programs.append(program_lib.build(config, sharding.make_mesh(1, jax.devices()[:1])))
  batch = {'clips': jax.random.bits(key, clips_shape, jnp.uint8),
           'labels': jax.random.randint(key, (batch_size,), 0,
                                        programs[0].config.model.num_classes)}
  with jax.default_matmul_precision('highest'):  # this check only: no TF32 in either layout
    default, nhwc = [outputs(program, batch=batch) for program in programs]
  device = jax.devices()[0]
  return {'model': model_name, 'width': width, 'frames': frames, 'crop': crop,
          'batch': batch_size, 'device': device.device_kind, 'platform': device.platform,
          **compare(default, nhwc, tolerance)}


def report_lines(result: dict) -> list[str]:
  """What the command prints: the worst difference of each output, every array that differs,
  and the verdict."""
  lines = [f"{result['model']} width {result['width']}, {result['frames']}x{result['crop']}, "
           f"batch {result['batch']}, float32 on {result['device']}: channels-last vs default "
           'convolution layouts, relative difference']
  for name in COMPARED:
    rows = [r for r in result['rows'] if r['output'] == name and not r['zero_gradient']]
    worst = max(rows, key=lambda r: r['difference'], default=None)
    if worst:
      lines.append(f"  {name:24s} {worst['difference']:.2e}  {worst['array']}")
  for r in result['differing']:
    lines.append(f"  DIFFERS: {r['output']} {r['array']} by {r['difference']:.2e}")
  if result['noise']:
    lines.append(f"  {len(result['noise'])} arrays with a zero gradient (rounding noise, not "
                 'counted) differ: ' + ', '.join(f"{r['output']} {r['array']} {r['difference']:.1e}"
                                                 for r in result['noise'][:8])
                 + (' ...' if len(result['noise']) > 8 else ''))
  lines.append('same training' if result['holds'] else
               f"DIFFERENT: {len(result['differing'])} arrays over {result['tolerance']:g}")
  return lines


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('enum', 'model', 'cstm_bninception', list(MODELS), 'The model.')
  define('float', 'width', 0.25, 'Channel multiplier.', lower_bound=0.0)
  define('integer', 'frames', 4, 'Frames per clip.', lower_bound=1)
  define('integer', 'crop', 224, 'Crop size.', lower_bound=1)
  define('integer', 'batch', 2, 'Clips in the batch.', lower_bound=1)
  define('float', 'tolerance', 1e-4, 'The largest relative difference that passes.',
         lower_bound=0.0)
  define('bool', 'allow_cpu', False, 'Run on a CPU too (both layouts then compile the same; '
         'for testing the check itself).')
  define('string', 'json', None, 'Write the comparison, every array, to this file.')


def main(argv=None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  device = jax.devices()[0]
  if device.platform != 'gpu' and not args.allow_cpu:
    print(f'no GPU here ({device.platform}): the option only changes GPU compiles')
    return 0
  result = check(model_name=args.model, width=args.width, frames=args.frames, crop=args.crop,
                 batch_size=args.batch, tolerance=args.tolerance)
  print('\n'.join(report_lines(result)))
  if args.json:
    paths.write_text(args.json, json.dumps(result, indent=1) + '\n')
  return 0 if result['holds'] else 1


if __name__ == '__main__':
  sys.exit(run_main(main))
