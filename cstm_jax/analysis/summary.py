"""Parameters and multiply-adds of every named model, counted by XLA.

  python -m cstm_jax.analysis.summary [--frames 8] [--json] [--models cstm_bninception,i3d]

Nothing is computed: parameters come from `jax.eval_shape` of the initialiser and multiply-adds
from XLA's cost analysis of the jitted inference forward on abstract inputs (FLOPs / 2), at
each model's native crop, one clip of `--frames` frames, 174 classes. `gmacs` counts every
kernel tap, as papers do; `gmacs_xla` is XLA's count of the graph as it runs, which skips taps
on zero padding (see `cstm_jax.analysis.flops`).
"""
import json
import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from absl import flags

from cstm_foundation import cli_flags
from cstm_foundation.commands import run_main
from cstm_jax.config.defaults import model_config
from cstm_jax.models.build import abstract_variables, build_model
from cstm_jax.analysis.flops import count_macs
from cstm_jax.config.zoo import BACKBONES, MODELS, check_model_names, name_of


def count_params(variables) -> int:
  return sum(leaf.size for leaf in jax.tree_util.tree_leaves(variables['params']))


def summarize_config(config, crop: Optional[int] = None) -> dict:
  """One row of the summary for a `config.model` block (one clip of `num_frames` frames)."""
  crop = crop or BACKBONES[config.backbone].crop
  model = build_model(config)
  clips = jax.ShapeDtypeStruct((1, config.num_frames, crop, crop, 3), jnp.float32)
  variables = abstract_variables(model, clips)
  forward = lambda v, x: model.apply(v, x, train=False)
  return {
      'model': name_of(config),
      'backbone': config.backbone,
      'temporal': config.temporal,
      'frames': config.num_frames,
      'crop': crop,
      'params': count_params(variables),
      'gmacs': round(count_macs(forward, variables, clips) / 1e9, 6),
      'gmacs_xla': round(count_macs(forward, variables, clips, dense=False) / 1e9, 6),
  }


def summarize(name: str, frames: int = 8, num_classes: int = 174, crop: Optional[int] = None,
              **overrides) -> dict:
  """One row of the summary for the named model."""
  config = model_config(name, num_classes=num_classes, num_frames=frames, **overrides)
  return summarize_config(config, crop)


def markdown_table(rows: Sequence[dict]) -> str:
  lines = ['| model | backbone | temporal | frames | crop | params (M) | GMACs / clip | '
           'GMACs / clip (XLA, as run) |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['model']} | {r['backbone']} | {r['temporal']} | {r['frames']} | "
                 f"{r['crop']} | {r['params'] / 1e6:.2f} | {r['gmacs']:.2f} | "
                 f"{r['gmacs_xla']:.2f} |")
  return '\n'.join(lines)


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('integer', 'frames', 8, 'Frames per clip.', lower_bound=1)
  define('bool', 'json', False, 'Print a JSON list instead of a table.')
  define('list', 'models', None, f'Model names (default: all): {", ".join(MODELS)}.')


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  try:
    names = check_model_names(args.models or MODELS)
  except ValueError as e:
    cli_flags.fail(str(e))
  rows = []
  for i, name in enumerate(names, 1):
    if not args.json:
      print(f'[{i}/{len(names)}] counting {name} ...', file=sys.stderr, flush=True)
    rows.append(summarize(name, args.frames))
  print(json.dumps(rows, indent=1) if args.json else markdown_table(rows))
  return 0


if __name__ == '__main__':
  sys.exit(run_main(main))
