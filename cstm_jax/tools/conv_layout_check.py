"""On a GPU: does `xla.gpu_conv_nhwc` (channels-last convolutions) compute the same train step?

  python -m cstm_jax.tools.conv_layout_check [--model cstm_bninception] [--width 0.25]

Runs one training step (loss, gradients, BatchNorm statistics) and the eval-mode forward of a
randomly initialised model on the same random batch with XLA:GPU's default convolution layouts
and with channels-last forced, float32 with full-precision matmuls and convolutions (no TF32),
and prints the largest relative difference of each output. Exits 1 above `--tolerance`.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from cstm_jax import base_config, optim, sharding, states, steps
from cstm_jax.base_config import model_config
from cstm_jax.models.build import abstract_variables, build_model
from cstm_jax.models.zoo import BACKBONES, MODELS
from input_pipeline import cli_flags
from input_pipeline.errors import run_main


def relative_difference(a, b) -> tuple[float, str]:
  """Largest ||a - b|| / ||b|| over the leaves, and that leaf's path."""
  worst = (0.0, '')
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    diff = float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
    worst = max(worst, (diff, jax.tree_util.keystr(path)))
  return worst


def outputs(model, mesh, clips_shape, colour: str, nhwc: bool, batch, seed: int = 0) -> dict:
  config = base_config.get_config().optim
  schedule = optim.learning_rate_schedule(config, clips_shape[0], steps_per_epoch=100)
  params = abstract_variables(model, states.one_clip(clips_shape))
  tx = optim.make_optimizer(config, schedule, params['params'])
  state, shardings = states.create_train_state(model, tx, clips_shape, mesh, jax.random.key(seed))
  variables = states.variables_of(state)
  logits, _ = steps.jit_eval_step(model, mesh, colour, nhwc)(variables,
                                                             {'clips': batch['clips'][:, None]})
  step = steps.jit_train_step(steps.make_train_step(model, schedule, colour), shardings, mesh,
                              nhwc)
  new_state, metrics = step(state, batch, jax.random.key(1))
  return {'eval_logits': logits, 'loss': metrics['loss'], 'params_after_step': new_state.params,
          'batch_stats_after_step': new_state.batch_stats}


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('enum', 'model', 'cstm_bninception', list(MODELS), 'The model.')
  define('float', 'width', 0.25, 'Channel multiplier.', lower_bound=0.0)
  define('integer', 'frames', 4, 'Frames per clip.', lower_bound=1)
  define('integer', 'crop', 224, 'Crop size.', lower_bound=1)
  define('integer', 'batch', 2, 'Clips in the batch.', lower_bound=1)
  define('float', 'tolerance', 1e-4, 'The largest relative difference that passes.',
         lower_bound=0.0)


def main(argv=None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  device = jax.devices()[0]
  if device.platform != 'gpu':
    print(f'no GPU here ({device.platform}): the option only changes GPU compiles')
    return 0
  jax.config.update('jax_default_matmul_precision', 'highest')
  config = model_config(args.model, num_frames=args.frames, width=args.width)
  model = build_model(config)
  mesh = sharding.make_mesh(1, jax.devices()[:1])
  clips_shape = (args.batch, args.frames, args.crop, args.crop, 3)
  key = jax.random.key(42)
  batch = {'clips': jax.random.bits(key, clips_shape, jnp.uint8),
           'labels': jax.random.randint(key, (args.batch,), 0, 174)}
  colour = BACKBONES[config.backbone].colour
  default, nhwc = (outputs(model, mesh, clips_shape, colour, flag, batch)
                   for flag in (False, True))
  print(f'{args.model} width {args.width}, {args.frames}x{args.crop}, batch {args.batch}, '
        f'float32 on {device.device_kind}: NHWC vs default layouts, relative difference')
  worst = 0.0
  for name in default:
    diff, where = relative_difference(nhwc[name], default[name])
    worst = max(worst, diff)
    print(f'  {name:24s} {diff:.2e}  {where}')
  print('same function' if worst <= args.tolerance else f'DIFFERENT (> {args.tolerance:g})')
  return 0 if worst <= args.tolerance else 1


if __name__ == '__main__':
  sys.exit(run_main(main))
