"""Which classes does run B get right that run A does not? (the paper's Fig. 5)

  python -m cstm_jax.analysis.class_gains RUN_A RUN_B [--views 1x1] [--top 15] [--out FILE.png]

Reads each run's evaluation results (`eval/final_<views>.json`, else `best_` / `latest_`), prints
the classes whose top-1 improves most from A to B and plots them as bars.
"""
import json
import sys

import numpy as np
from absl import flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.errors import ConfigError, MissingFile
from cstm_foundation.commands import run_main

RESULT_PREFIXES = ('final', 'best', 'latest')


def load_results(run, views: str = '1x1') -> dict:
  run = paths.resolve(run)
  for prefix in RESULT_PREFIXES:
    path = run / 'eval' / f'{prefix}_{views}.json'
    if path.exists():
      return json.loads(path.read_text())
  raise MissingFile(f'{run}: no evaluation results for {views} views in {run / "eval"} '
                          '(train the run, or evaluate it with --config.mode=eval)')


def class_gains(a: dict, b: dict) -> list[tuple[str, float, float, float]]:
  """(class, top-1 of A, top-1 of B, gain) for the classes both runs saw, biggest gain first."""
  if a['class_names'] != b['class_names']:
    raise ConfigError('the two runs were evaluated on different classes')
  rows = [(name, pa, pb, pb - pa) for name, pa, pb in
          zip(a['class_names'], a['per_class_top1'], b['per_class_top1'])
          if pa is not None and pb is not None]
  return sorted(rows, key=lambda r: -r[3])


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('string', 'views', '1x1', "The evaluation to compare: '1x1' or '2x3'.")
  define('integer', 'top', 15, 'Classes to list and plot.', lower_bound=1)
  define('string', 'out', None, 'The PNG (default: RUN_B/eval/gains_over_<A>.png).')


def main(argv=None) -> int:
  args, (run_a, run_b) = cli_flags.parse_with_positional(argv, __doc__, define_flags,
                                                         names=('RUN_A', 'RUN_B'))
  a, b = load_results(run_a, args.views), load_results(run_b, args.views)
  rows = class_gains(a, b)[:args.top]
  run_a, run_b = paths.resolve(run_a), paths.resolve(run_b)
  name_a, name_b = run_a.name, run_b.name
  print(f'top-1: {name_a} {a["top1"]:.2f}  {name_b} {b["top1"]:.2f}  '
        f'({b["top1"] - a["top1"]:+.2f})')
  print(f'{"class":<50} {name_a:>8} {name_b:>8} {"gain":>8}')
  for name, pa, pb, gain in rows:
    print(f'{name[:50]:<50} {pa:8.1f} {pb:8.1f} {gain:+8.1f}')
  from cstm_jax.train import plots
  out = paths.resolve(args.out or run_b / 'eval' / f'gains_over_{name_a}.png')
  plots.class_gains([r[0] for r in rows], np.array([r[3] for r in rows]), out,
                    f'Classes improved most from {name_a} to {name_b} (top-1, {args.views})')
  print(f'plot: {out}')
  return 0


if __name__ == '__main__':
  sys.exit(run_main(main))
