"""Ship a trained model: the inference function serialised with `jax.export`.

  python -m cstm_jax.inference.export --workdir runs/ssv2_16f --out cstm_ssv2.jax
  python -m cstm_jax.inference.export --checkpoint converted/ --config configs/ssv2_16f.py \
      --out m.jax
  python -m cstm_jax.inference.export --workdir runs/ssv2_tsm --views 2x3full --out tsm.jax

The file holds StableHLO with the weights inside; it runs in any process with jax installed
and none of this package:

  exported = jax.export.deserialize(open('cstm_ssv2.jax', 'rb').read())
  logits = exported.call(clips)   # uint8 RGB [batch, T, crop, crop, 3] -> float32 [batch, classes]

The batch size is symbolic (any batch runs). Input is the cropped frames as uint8 RGB: the
backbone's normalisation is inside. `--views` exports a test protocol (evaluation's views, e.g.
`2x3full`): the input is then `[batch, views, T, side, side, 3]` (side: the crop, or the test
scale for `full`) and the logits are averaged over the views, as evaluation averages them.
`FILE.json` beside it says the input shape, the views, the test scale and the classes.
"""
import json
import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from absl import flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.errors import ConfigError
from cstm_foundation.commands import run_main
from cstm_jax.models.video import normalise
from cstm_jax.config.zoo import name_of
from cstm_jax.inference.predict import load_model_from_flags, parse_model_command
from cstm_jax.train import evaluation

DEFAULT_PLATFORMS = ('cpu', 'cuda')


def inference_function(model, variables, input_norm: str):
  """uint8 RGB clips `[B, T, H, W, 3]` -> float32 logits `[B, classes]`, normalised inside
  (`input_norm`) as the training and evaluation steps normalise them."""
  return lambda clips: model.apply(variables, normalise(clips, input_norm), train=False)


def input_shape(program, views: str = '1x1') -> tuple:
  """The exported function's input, `batch` first: `[batch, T, crop, crop, 3]` for '1x1', else
  `[batch, views, T, side, side, 3]`."""
  clips, crops, full = evaluation.parse_views(views)
  frames, crop = program.clips_shape[1:3]
  side = program.config.data.test_scale if full else crop
  if (clips, crops, full) == (1, 1, False):
    return ('batch', frames, crop, crop, 3)
  return ('batch', clips * crops, frames, side, side, 3)


def export(program, variables, platforms: Sequence[str] = DEFAULT_PLATFORMS, *,
           views: str = '1x1'):
  """`jax.export.Exported` of the inference function of `program` (a `train.program.Program`)
  with `variables` for the test protocol `views`, batch size symbolic. Traced for one device,
  without the program's mesh."""
  batch, = jax.export.symbolic_shape('batch')
  shape = input_shape(program, views)
  forward = inference_function(program.model, variables, program.input_norm)
  if len(shape) == 5:
    infer = jax.jit(forward)
  else:  # several views: folded into the batch, their logits averaged
    infer = jax.jit(lambda clips: forward(clips.reshape(-1, *clips.shape[2:])).reshape(
        clips.shape[0], clips.shape[1], -1).mean(axis=1))
  return jax.export.export(infer, platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((batch, *shape[1:]), jnp.uint8))


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('string', 'out', None, 'The file to write, local or gs:// (and FILE.json beside it).',
         required=True)
  define('list', 'platforms', list(DEFAULT_PLATFORMS), 'Platforms to export for: cpu, cuda, '
         'rocm, tpu.')
  define('string', 'views', '1x1', "The test protocol the exported function takes: '1x1' (one "
         "clip), or evaluation's views such as '2x3', '1x10', '2x3full'.")


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_model_command(argv, __doc__, define_flags)
  try:  # checked before the model loads
    evaluation.parse_views(args.views)
  except ConfigError as e:
    cli_flags.fail(f'--views: {e}')
  config, program, variables, names = load_model_from_flags(args)
  exported = export(program, variables, args.platforms, views=args.views)
  out = paths.resolve(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  serialized = exported.serialize()
  out.write_bytes(serialized)
  meta = {
      'model': name_of(config.model),
      'input': {'shape': list(input_shape(program, args.views)), 'dtype': 'uint8',
                'channels': 'RGB'},
      'views': args.views,
      'output': {'shape': ['batch', config.model.num_classes], 'dtype': 'float32',
                 'meaning': 'logits; softmax for probabilities'},
      'test_scale': config.data.test_scale,
      'platforms': list(exported.platforms),
      'classes': list(names),
  }
  paths.write_text(f'{out}.json', json.dumps(meta, indent=1))
  print(f'wrote {out} ({len(serialized) / 2 ** 20:.1f} MiB, {", ".join(exported.platforms)}) '
        f'and {out}.json')
  return 0


def cli() -> int:
  """The `cstm-export` command (`python -m cstm_jax.inference.export`)."""
  return run_main(main)


if __name__ == '__main__':
  sys.exit(cli())
