"""Turns a downloaded dataset into a prepared TFDS dataset (ArrayRecord).

  python -m input_pipeline.prepare --dataset {ssv2,ssv1,jester,folder} --manual_dir SRC
      --data_dir OUT [--workers N] [--short_side PX] [--rebuild] [--save_every_s S]

Writes OUT/<name>/1.0.0/ (name: something_something_v2, something_something_v1, jester,
video_folder) and, beside it, `prepare_report.json`: the summary and every skipped video with
its reason. An annotation file in the wrong format, or a video id listed twice, stops the run
with an error naming it. Stopped anywhere (Ctrl-C, SIGTERM, SIGKILL, a lost VM), the same
command continues from the videos it had decoded (`input_pipeline/prepare_work.py`) and ends
with the dataset an uninterrupted run makes. Run again once done, it keeps the prepared dataset
and its report; with other options it refuses unless --rebuild.
"""
if __name__ == '__main__':  # stop requests from the first moment, before the imports below
  from cstm_foundation import stopping as _stopping
  _stopping.install(at_safe_points=True)

import json
import pathlib
import shutil
import sys
import time

import tensorflow_datasets as tfds
from absl import flags, logging
from tensorflow_datasets.core.constants import INCOMPLETE_PREFIX

from cstm_foundation import cli_flags, paths
from cstm_foundation.errors import ConfigError, MissingFile, first_line
from cstm_foundation.commands import run_main
from input_pipeline import builders, prepare_work, worker_pools

REPORT = 'prepare_report.json'


def prepare(dataset: str, manual_dir, data_dir, *, workers=None, short_side=None,
            rebuild: bool = False, save_every_s: float = prepare_work.SAVE_EVERY_S) -> dict:
  """Builds the dataset; returns the report (also written beside the dataset).

  A dataset already prepared in `data_dir` is kept with its report when it was made with the
  same options, refused when the options differ (`rebuild` replaces it). A preparation that was
  stopped (or killed) continues from the videos it had decoded (`prepare_work`); what TFDS was
  writing when it stopped is removed first.
  """
  if dataset not in builders.BUILDERS:
    raise ConfigError(f'unknown dataset {dataset!r}; choose one of {sorted(builders.BUILDERS)}')
  if workers != 1:  # before anything is written: workers that cannot start fail now
    worker_pools.check_spawnable('prepare', in_process='workers=1 (--workers 1)')
  tfds.disable_progress_bar()  # one progress line, ours, per split (TFDS's own bars redraw)
  manual_dir = pathlib.Path(paths.expand(manual_dir))
  data_dir = paths.expand(data_dir)
  if paths.is_remote(data_dir):
    raise ConfigError(f'data_dir={data_dir}: prepare writes to a local disk (ArrayRecord files); '
                      'prepare locally, then copy the dataset folder with gcloud storage cp -r')
  if not manual_dir.is_dir():
    raise MissingFile(f'{manual_dir}: manual dir not found')
  cls = builders.BUILDERS[dataset]
  start = time.monotonic()
  builder = cls(data_dir=str(data_dir), class_names=cls.class_names(manual_dir),
                short_side=short_side, workers=workers)
  options = {'short_side': builder._short_side}  # what the stored frames depend on
  folder = pathlib.Path(builder.data_dir)
  with prepare_work.Lock(folder.parent):
    return _prepare(builder, folder, manual_dir, options, start, rebuild=rebuild,
                    save_every_s=save_every_s)


def _prepare(builder, folder: pathlib.Path, manual_dir, options, start, *, rebuild: bool,
             save_every_s: float) -> dict:
  work = prepare_work.Work(folder)
  remove_incomplete(folder)
  if (folder / 'dataset_info.json').exists():
    report_file = folder / REPORT
    if not report_file.exists() and work.exists():  # stopped after TFDS, before the report
      return _finish(builder, work, manual_dir, options, start)
    earlier = json.loads(report_file.read_text()) if report_file.exists() else {}
    made_with = earlier.get('options', options)  # unknown for data of older versions: kept
    changed = {k: (made_with.get(k), v) for k, v in options.items() if made_with.get(k) != v}
    if not changed:
      work.remove()  # a stop after the report left it
      logging.info('%s is already prepared with these options; kept as it is', folder)
      return {**earlier, 'reused': True}
    if not rebuild:
      listed = ', '.join(f'{k} {old!r} then, {new!r} now' for k, (old, new) in changed.items())
      raise ConfigError(f'{folder} was prepared with other options ({listed}): pass --rebuild '
                        'to replace it, or another --data_dir')
    logging.warning('Rebuilding %s (--rebuild)', folder)
    shutil.rmtree(folder)
  planned = builder.plan(manual_dir)
  identity = {split: {'videos': len(readable), 'digest': prepare_work.digest(
      [[e.video_id, str(e.path), e.label] for e in readable])}
              for split, (readable, _) in planned.items()}
  work.begin(options, identity, rebuild=rebuild)
  for split, (readable, _) in planned.items():
    builder.encode(split, work, readable, resumes=prepare_work.RESUMES,
                   save_every_s=save_every_s)
  builder.planned, builder.work = planned, work
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return _finish(builder, work, manual_dir, options, start, planned=planned)


def _finish(builder, work, manual_dir, options, start, *, planned=None) -> dict:
  """Writes the report of the dataset TFDS wrote from `work` beside it, then removes `work`."""
  if planned is None:
    planned = builder.plan(manual_dir)
  skipped, totals = [], {'videos': 0, 'frames': 0, 'bytes': 0}
  for split, (readable, unknown) in planned.items():
    summary = work.summary(split)
    skipped += unknown + [builders.skip_row(split, readable[index], reason)
                          for index, reason in summary['skipped']]
    for key in totals:
      totals[key] += summary[key]
  report = {
      'dataset': builder.name,
      'path': str(builder.data_dir),
      'options': options,
      'manual_dir': str(manual_dir),
      'classes': len(builder.info.features['label'].names),
      'splits': {name: split.num_examples for name, split in builder.info.splits.items()},
      'videos_written': totals['videos'],
      'videos_skipped': len(skipped),
      'frames': totals['frames'],
      'bytes': totals['bytes'],
      'seconds': round(time.monotonic() - start, 2),
      'workers': builder._workers,
      'skipped': skipped,
      'in_train_and_validation': builder.in_both_splits,
  }
  (pathlib.Path(builder.data_dir) / REPORT).write_text(json.dumps(report, indent=1))
  work.remove()
  return report


def remove_incomplete(folder: pathlib.Path) -> None:
  """Deletes what a killed preparation of `folder` left (TFDS's `incomplete.*` folders)."""
  for leftover in folder.parent.glob(f'{INCOMPLETE_PREFIX}*'):
    size = sum(f.stat().st_size for f in leftover.rglob('*') if f.is_file())
    logging.warning('Removing %s, left by a killed preparation (%.1f MiB)', leftover,
                    size / 2 ** 20)
    shutil.rmtree(leftover)


def verify(dataset: str, data_dir) -> dict:
  """Reads every record of every split of a prepared dataset; returns {'path', 'records',
  'damaged': [{'split', 'shard', 'record', 'error'}]}."""
  from input_pipeline import records
  if dataset not in builders.BUILDERS:
    raise ConfigError(f'unknown dataset {dataset!r}; choose one of {sorted(builders.BUILDERS)}')
  name = builders.BUILDERS[dataset].name
  data_dir = paths.expand(data_dir)
  if not (pathlib.Path(data_dir) / name).is_dir():
    raise MissingFile(f'{pathlib.Path(data_dir) / name}: no prepared {dataset} dataset there')
  builder = tfds.builder(name, data_dir=data_dir)
  damaged, total = [], 0
  for split, info in builder.info.splits.items():
    source = records.Records(info.file_instructions)
    total += len(source)
    for index in range(len(source)):
      try:
        source[index]
      except records.DamagedRecord as error:
        cause = error.__cause__
        shard, position = source.locate(index)
        damaged.append({'split': split, 'shard': source.shard_path(shard), 'record': position,
                        'error': first_line(cause, 200) if cause else ''})
  return {'path': str(builder.data_dir), 'records': total, 'damaged': damaged}


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('enum', 'dataset', None, sorted(builders.BUILDERS), 'The dataset\'s format.',
         required=True)
  define('string', 'manual_dir', None, 'The downloaded dataset (not needed with --verify).')
  define('string', 'data_dir', None, 'Where prepared datasets live.', required=True)
  define('integer', 'workers', None, 'Decoding processes (default: all cores).', lower_bound=1)
  define('integer', 'short_side', None, 'Resize frames to this short side (default 256 for '
         'videos, native frames for SSv1 / Jester; 0 keeps native).', lower_bound=0)
  define('bool', 'rebuild', False, 'Replace a dataset prepared before with other options.')
  define('float', 'save_every_s', prepare_work.SAVE_EVERY_S, 'Keep the decoded videos on disk '
         'this often: a stop, even a SIGKILL, loses at most this much work.', lower_bound=0.0)
  define('bool', 'verify', False, 'Read every record of the dataset prepared in --data_dir and '
         'list the damaged ones (exit 1 if any) instead of preparing.')


def main(argv=None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  if args.verify:
    return _print_verified(verify(args.dataset, args.data_dir))
  if not args.manual_dir:
    cli_flags.fail('--manual_dir is required (the downloaded dataset), except with --verify')
  report = prepare(args.dataset, args.manual_dir, args.data_dir, workers=args.workers,
                   short_side=args.short_side, rebuild=args.rebuild,
                   save_every_s=args.save_every_s)
  if report.get('reused'):
    print(f"{report.get('path', args.data_dir)}: already prepared with these options; kept "
          f"({report.get('videos_written', '?')} videos written, "
          f"{report.get('videos_skipped', '?')} skipped when it was made)")
    return 0
  for video_id in report['in_train_and_validation'][:20]:
    print(f'  warning: {video_id} is in both the training and the validation split')
  rate = report['videos_written'] / max(report['seconds'], 1e-9)
  print(f"{report['dataset']}: {report['videos_written']} videos written, "
        f"{report['videos_skipped']} skipped, {report['frames']} frames, "
        f"{report['bytes'] / 2**20:.1f} MiB in {report['seconds']:.1f} s "
        f"({rate:.1f} videos/s with {report['workers']} workers) -> {report['path']}")
  for skip in report['skipped'][:20]:
    print(f"  skipped {skip['split']} {skip['id']}: {skip['reason']} ({skip['path']})")
  if len(report['skipped']) > 20:
    print(f"  ... {len(report['skipped']) - 20} more in {report['path']}/{REPORT}")
  return 0


def _print_verified(result: dict) -> int:
  """One line per shard and kind of damage, with the records it holds."""
  bad = result['damaged']
  print(f"{result['path']}: {result['records']} records read, {len(bad)} damaged")
  groups = {}
  for row in bad:
    groups.setdefault((row['split'], row['shard'], row['error']), []).append(row['record'])
  for (split, shard, error), positions in groups.items():
    listed = ', '.join(map(str, positions[:10])) + (' ...' if len(positions) > 10 else '')
    print(f'  {split}: {shard}: {len(positions)} records ({listed}): {error}')
  if bad:
    print('prepare the dataset again with --rebuild (or copy it again)')
  return 1 if bad else 0


def cli() -> int:
  """The `cstm-prepare` command (`python -m input_pipeline.prepare`)."""
  return run_main(main, at_safe_points=True)


if __name__ == '__main__':
  sys.exit(cli())
