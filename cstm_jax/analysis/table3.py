"""Table 3 of the paper, cell by cell: its 29 top-1 numbers (validation, 1 clip x centre crop),
the config that trains each and its command, and the number of a run of that config where one
is found.

  python -m cstm_jax.analysis.table3 [--runs=runs]

A run of a cell is `<runs>/<config name>/final_metrics.json` (written by a finished training run
or `--config.mode=eval`), read at the cell's views ('1x1'). Each config's docstring quotes its
cell (`tests/test_table3.py` holds them together).
"""
import dataclasses
import json
import pathlib
import sys
from typing import Optional, Sequence

from absl import flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.commands import run_main

DATASETS = ('ssv1', 'ssv2', 'jester')
TITLES = {'ssv1': 'SSv1', 'ssv2': 'SSv2', 'jester': 'Jester'}


@dataclasses.dataclass(frozen=True)
class Row:
  method: str
  backbone: str
  frames: int
  model: str                       # the named model (config/zoo.py) its configs train
  cells: dict[str, tuple[float, str]]  # dataset -> (the paper's top-1, config name)


TABLE3 = (
    Row('TSN', 'ResNet-50', 8, 'tsn_resnet50', {
        'ssv1': (19.70, 'ssv1_tsn_resnet50'), 'ssv2': (27.80, 'ssv2_tsn_resnet50'),
        'jester': (81.80, 'jester_tsn_resnet50')}),
    Row('TRN multiscale', 'BN-Inception', 8, 'trn_bninception', {
        'ssv1': (34.44, 'ssv1_trn'), 'ssv2': (48.80, 'ssv2_trn'), 'jester': (95.30, 'jester_trn')}),
    Row('TSM', 'ResNet-50', 8, 'tsm_resnet50', {
        'ssv1': (43.40, 'ssv1_tsm_resnet50'), 'ssv2': (58.20, 'ssv2_tsm_resnet50'),
        'jester': (94.40, 'jester_tsm_resnet50')}),
    Row('TSM', 'ResNet-50', 16, 'tsm_resnet50', {
        'ssv1': (44.80, 'ssv1_tsm_resnet50_16f'), 'ssv2': (58.70, 'ssv2_tsm_resnet50_16f')}),
    Row('GSM', 'BN-Inception', 8, 'gsm_bninception', {
        'ssv1': (47.24, 'ssv1_gsm'), 'ssv2': (61.23, 'ssv2_ablation_gsm'),
        'jester': (95.73, 'jester_gsm')}),
    Row('S3D', 'Inception-v1', 64, 's3d', {'ssv1': (47.30, 'ssv1_s3d')}),
    Row('S3D-G', 'Inception-v1', 64, 's3dg', {'ssv1': (48.20, 'ssv1_s3dg')}),
    Row('STM', 'ResNet-50', 8, 'stm_resnet50', {'jester': (96.60, 'jester_stm_resnet50')}),
    Row('CSTM', 'BN-Inception', 8, 'cstm_bninception', {
        'ssv1': (47.96, 'ssv1_8f'), 'ssv2': (63.45, 'ssv2_8f'), 'jester': (96.40, 'jester_8f')}),
    Row('CSTM', 'Inception v3', 8, 'cstm_inception_v3', {
        'ssv1': (49.24, 'ssv1_v3_8f'), 'ssv2': (63.95, 'ssv2_v3_8f'),
        'jester': (96.51, 'jester_v3_8f')}),
    Row('CSTM', 'BN-Inception', 16, 'cstm_bninception', {
        'ssv1': (49.84, 'ssv1_16f'), 'ssv2': (63.54, 'ssv2_16f'), 'jester': (96.48, 'jester_16f')}),
    Row('CSTM', 'Inception v3', 16, 'cstm_inception_v3', {
        'ssv1': (51.27, 'ssv1_v3_16f'), 'ssv2': (64.04, 'ssv2_v3_16f'),
        'jester': (96.61, 'jester_v3_16f')}),
)
VIEWS = '1x1'  # the table's protocol: 1 clip, centre crop


def command(config: str) -> str:
  return f'python main.py --config=configs/{config}.py --workdir=runs/{config}'


def run_top1(runs, config: str) -> Optional[float]:
  """The top-1 of a finished run of `config` under `runs`, at the table's views; None if none."""
  path = paths.resolve(runs) / config / 'final_metrics.json'
  try:
    return float(json.loads(path.read_text())[VIEWS]['top1'])
  except (OSError, ValueError, KeyError, TypeError):
    return None


def render(runs) -> str:
  """The table as the paper gives it (paper / run in each cell), then every cell's command."""
  lines = ['Table 3 (top-1 %, validation, 1 clip x centre crop): paper / this run '
           f'(runs in {runs}; "-" where none has finished)', '',
           '| Method | Backbone | Frames | ' + ' | '.join(TITLES[d] for d in DATASETS) + ' |',
           '|---|---|---|' + '---|' * len(DATASETS)]
  commands = []
  for row in TABLE3:
    cells = []
    for dataset in DATASETS:
      if dataset not in row.cells:
        cells.append('')
        continue
      paper, config = row.cells[dataset]
      ours = run_top1(runs, config)
      cells.append(f'{paper:.2f} / {"-" if ours is None else f"{ours:.2f}"}')
      commands.append(f'{row.method} {row.backbone} {row.frames}f, {TITLES[dataset]}: '
                      f'{command(config)}')
    lines.append(f'| {row.method} | {row.backbone} | {row.frames} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines + ['', f'{len(commands)} cells, one command each:'] +
                   [f'  {c}' for c in commands]) + '\n'


def define_flags(flag_values: flags.FlagValues) -> None:
  cli_flags.definer(flag_values)(
      'string', 'runs', 'runs', 'The folder holding the runs, one per config '
      '(<runs>/<config name>/final_metrics.json); local or gs://.')


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  sys.stdout.write(render(args.runs))
  return 0


if __name__ == '__main__':
  sys.exit(run_main(main))
