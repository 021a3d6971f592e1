"""PyTorch weights -> Flax variables, written as an orbax checkpoint that `init_from` loads.

  python -m cstm_jax.inference.convert --config configs/ssv2_16f.py --torch bn_inception.pth \
      --out DIR

The layouts it reads, and what it does with a head or a temporal module the weights lack:
`cstm_jax/models/torch_weights.py`. For the ImageNet weights of the paper's backbones,
`--config.train.init_from=imagenet` downloads and converts them itself (`train/pretrained.py`).
"""
import sys
from typing import Optional, Sequence

import jax
import numpy as np
from absl import flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.errors import BadFile
from cstm_foundation.commands import run_main
from cstm_jax.config import loader
from cstm_jax.config.zoo import name_of
from cstm_jax.models.torch_weights import convert_state_dict, load_state_dict
from cstm_jax.train import checkpoints


# --- Command line -----------------------------------------------------------------------------

def output_problem(out, weights, overwrite: bool) -> str:
  """Why converting into `out` would lose data ('' when it would not). Writing a checkpoint
  replaces the whole folder, so it must be new, empty, or an earlier conversion."""
  if weights == out or out in weights.parents:
    return (f'--out {out} holds the input {weights}; writing the checkpoint there would delete '
            'it: pass a new path')
  if out.exists() and not out.is_dir():
    return f'--out {out} is a file; pass a folder path'
  earlier = (out / '_CHECKPOINT_METADATA').exists()
  if out.exists() and any(out.iterdir()) and not earlier and not overwrite:
    return (f'--out {out} already holds files that are not a converted checkpoint, and writing '
            'the checkpoint would delete them: pass a new path, or --overwrite to replace it')
  return ''


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('string', 'torch', None, '.pth, .safetensors or .npz weights (local or gs://).',
         required=True)
  define('string', 'out', None, 'The folder of the orbax checkpoint to write (local or gs://).',
         required=True)
  define('bool', 'overwrite', False, 'Replace --out even if it holds something other than a '
         'conversion.')


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = loader.parse_command(
      argv, __doc__, define_flags,
      config_help='The experiment config whose model block is the target (configs/ssv2_16f.py, '
      'configs/ssv2_16f.py:smoke).')
  out = paths.resolve(args.out)
  problem = output_problem(out, paths.resolve(args.torch), args.overwrite)
  if problem:
    cli_flags.fail(problem)
  config = args.config
  state_dict = load_state_dict(args.torch)
  try:
    variables, report = convert_state_dict(state_dict, config.model)
  except BadFile as e:  # the weights do not fit the model: name the file too
    raise BadFile(f'{paths.resolve(args.torch)}: {e}') from e
  checkpoints.save_variables(out, variables)
  count = sum(np.size(v) for v in jax.tree_util.tree_leaves(variables['params']))
  print(f'wrote {count / 1e6:.2f} M parameters of '
        f'{name_of(config.model)} to {out}')
  if report['dropped_head']:
    classes = config.model.num_classes or "the dataset's"
    print(f'dropped the head of the weights: training starts a new one for {classes} classes')
  if report['new_modules']:
    print(f'{len(report["new_modules"])} temporal modules are new (not in the PyTorch weights) '
          'and start from their initialisation')
  print(f'train from it with --config.train.init_from={out}')
  return 0


def cli() -> int:
  """The `cstm-convert` command (`python -m cstm_jax.inference.convert`)."""
  return run_main(main)


if __name__ == '__main__':
  sys.exit(cli())
