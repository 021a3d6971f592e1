"""Turns a downloaded dataset into a prepared TFDS dataset (ArrayRecord).

  python -m input_pipeline.prepare --dataset {ssv2,ssv1,jester,folder} --manual_dir SRC
      --data_dir OUT [--workers N] [--short_side PX]

Writes OUT/<name>/1.0.0/ (name: something_something_v2, something_something_v1, jester,
video_folder) and, beside it, `prepare_report.json`: the summary and every skipped video with
its reason. An annotation file in the wrong format stops the run with an error naming it.
"""
import argparse
import json
import pathlib
import sys
import time

import tensorflow_datasets as tfds

from input_pipeline import builders, labels, paths

REPORT = 'prepare_report.json'


def prepare(dataset: str, manual_dir, data_dir, workers=None, short_side=None) -> dict:
  """Builds the dataset; returns the report (also written beside the dataset)."""
  if dataset not in builders.BUILDERS:
    raise ValueError(f'unknown dataset {dataset!r}; choose one of {sorted(builders.BUILDERS)}')
  manual_dir = pathlib.Path(paths.expand(manual_dir))
  data_dir = paths.expand(data_dir)
  if paths.is_remote(data_dir):
    raise ValueError(f'data_dir={data_dir}: prepare writes to a local disk (ArrayRecord files); '
                     'prepare locally, then copy the dataset folder with gcloud storage cp -r')
  if not manual_dir.is_dir():
    raise FileNotFoundError(f'{manual_dir}: manual dir not found')
  cls = builders.BUILDERS[dataset]
  start = time.monotonic()
  builder = cls(data_dir=str(data_dir), class_names=cls.class_names(manual_dir),
                short_side=short_side, workers=workers)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  seconds = time.monotonic() - start
  stats = builder.stats
  report = {
      'dataset': builder.name,
      'path': str(builder.data_dir),
      'classes': len(builder.info.features['label'].names),
      'splits': {name: split.num_examples for name, split in builder.info.splits.items()},
      'videos_written': stats['videos'],
      'videos_skipped': stats['skipped'],
      'frames': stats['frames'],
      'bytes': stats['bytes'],
      'seconds': round(seconds, 2),
      'workers': builder._workers,
      'skipped': builder.skipped,
  }
  (pathlib.Path(builder.data_dir) / REPORT).write_text(json.dumps(report, indent=1))
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--dataset', required=True, choices=sorted(builders.BUILDERS))
  parser.add_argument('--manual_dir', required=True, help='the downloaded dataset')
  parser.add_argument('--data_dir', required=True, help='where prepared datasets live')
  parser.add_argument('--workers', type=int, default=None, help='decoding processes (all cores)')
  parser.add_argument('--short_side', type=int, default=None,
                      help='resize frames to this short side (default 256 for videos, native '
                           'frames for SSv1 / Jester; 0 keeps native)')
  args = parser.parse_args(argv)
  try:
    report = prepare(args.dataset, args.manual_dir, args.data_dir, args.workers, args.short_side)
  except (labels.AnnotationError, FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
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


if __name__ == '__main__':
  sys.exit(main())
