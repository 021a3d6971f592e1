"""The demo (`make demo`): why temporal modelling matters, end to end on a CPU.

  python -m cstm_jax.demo [--workdir runs/demo] [--models tsn,cstm] [--dtype bfloat16]
      [--prepare_only]

Generates the synthetic SSv2-format dataset (webm + json) if it is absent, prepares it as a
TFDS dataset, trains and evaluates each model with `configs/demo.py`, then prints a
side-by-side table and writes the plots (confusion matrices, t-SNE, per-class gains).
"""
import json
import pathlib
import sys
import time

import numpy as np
from absl import flags, logging

from cstm_foundation import cli_flags, logs
from cstm_foundation.commands import run_main
from cstm_jax.analysis import class_gains
from cstm_jax.config import loader, zoo
from cstm_jax.train.writer import read_metrics
from input_pipeline import labels, prepare, synthetic

TRAIN_VIDEOS, VAL_VIDEOS, FRAME_SIZE = 960, 240, 32


def make_data(root: pathlib.Path) -> None:
  manual, prepared = root / 'synthetic', root / 'prepared'
  if not (manual / f'{labels.SSV2_PREFIX}-validation.json').exists():
    print(f'Generating the synthetic dataset in {manual} ...', flush=True)
    synthetic.generate(manual, TRAIN_VIDEOS, VAL_VIDEOS, test=0, size=FRAME_SIZE, seed=0)
  if not (prepared / 'something_something_v2').exists():
    print(f'Preparing it as a TFDS dataset in {prepared} ...', flush=True)
    report = prepare.prepare('ssv2', manual, prepared, short_side=0)
    print(f"  {report['videos_written']} videos, {report['frames']} frames, "
          f"{report['seconds']:.1f} s", flush=True)


def pair_accuracy(confusion: np.ndarray) -> float:
  """Inside each time-reversed pair, how often the right one of the two is chosen (%)."""
  right = total = 0
  for a, b in synthetic.time_reversed_pairs():
    block = confusion[np.ix_([a, b], [a, b])]
    right += block[0, 0] + block[1, 1]
    total += block.sum()
  return 100.0 * right / max(total, 1)


def run_model(temporal: str, workdir: pathlib.Path, dtype: str = 'float32') -> dict:
  """Trains and evaluates one model (skipped when its run already finished)."""
  from cstm_jax.train import experiment
  done = workdir / 'final_metrics.json'
  start = time.monotonic()
  if not done.exists():
    print(f'Training {temporal} (BN-Inception x0.25, 8 frames, 32 px, {dtype}) in {workdir} ...',
          flush=True)
    config = loader.load(f'demo:{temporal}')
    config.model.dtype = dtype
    experiment.run(config, str(workdir))
  else:
    print(f'{temporal}: using the finished run in {workdir} (delete it to train again)')
  results = class_gains.load_results(workdir)
  results['minutes'] = (time.monotonic() - start) / 60
  speeds = [r['clips_per_s'] for r in read_metrics(workdir) if 'clips_per_s' in r][1:]
  results['clips_per_s'] = float(np.median(speeds)) if speeds else float('nan')
  results['pair_accuracy'] = pair_accuracy(np.array(results['confusion']))
  return results


def table(results: dict) -> str:
  lines = ['| model | top-1 | top-5 | mean class acc. | inside time-reversed pairs | '
           'training clips/s | minutes |', '|---|---|---|---|---|---|---|']
  for name, r in results.items():
    lines.append(f"| {name} | {r['top1']:.1f} | {r['top5']:.1f} | "
                 f"{r['mean_class_accuracy']:.1f} | {r['pair_accuracy']:.1f} | "
                 f"{r['clips_per_s']:.0f} | {r['minutes']:.1f} |")
  return '\n'.join(lines)


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('string', 'workdir', None, 'Where the runs, their plots and summary.md go (default: '
         'runs/demo, runs/demo_bfloat16 in bfloat16: a finished run is reused, so the dtypes '
         'keep apart).')
  define('string', 'data',
         loader.load_module('demo').DATA,
         'Where the synthetic videos and their prepared dataset go (made once, reused).')
  define('list', 'models', ['tsn', 'cstm'], 'Temporal modules to train on BN-Inception '
         f'(configs/demo.py): {", ".join(zoo.TEMPORAL_MODULES)}.')
  define('enum', 'dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype of the models '
         '(model.dtype; parameters and statistics stay float32).')
  define('bool', 'prepare_only', False, 'Make and prepare the data, then stop.')


def main(argv=None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  if not args.models or set(args.models) - set(zoo.TEMPORAL_MODULES):
    cli_flags.fail(f'--models {",".join(args.models)}: choose from '
                   f'{", ".join(zoo.TEMPORAL_MODULES)}')
  logs.quiet_library_logs()
  logging.set_verbosity(logging.INFO)
  start = time.monotonic()
  make_data(pathlib.Path(args.data))
  if args.prepare_only:
    return 0
  workdir = pathlib.Path(args.workdir or
                         ('runs/demo' if args.dtype == 'float32' else f'runs/demo_{args.dtype}'))
  models = args.models
  results = {m: run_model(m, workdir / m, args.dtype) for m in models}
  summary = table(results)
  print(f'\nValidation, 1 clip x centre crop, {VAL_VIDEOS} synthetic videos of 12 classes '
        '(chance 8.3%):')
  total = (time.monotonic() - start) / 60
  summary += f'\n\nData and both runs: {total:.1f} minutes.'
  print(summary)
  (workdir / 'summary.md').write_text(summary + '\n')
  (workdir / 'summary.json').write_text(json.dumps(
      {m: {k: r[k] for k in ('top1', 'top5', 'mean_class_accuracy', 'pair_accuracy',
                             'clips_per_s', 'minutes')}
       for m, r in results.items()}, indent=1))
  if len(models) == 2:
    class_gains.main([str(workdir / models[0]), str(workdir / models[1]), '--top', '12'])
  print(f'Plots: {workdir}/*/eval/*.png, {workdir}/*/training_curves.png')
  return 0


def cli() -> int:
  """The `cstm-demo` command (`python -m cstm_jax.demo`)."""
  return run_main(main, at_safe_points=True)


if __name__ == '__main__':
  sys.exit(cli())
