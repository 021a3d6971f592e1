"""Input pipeline speed: preparation (videos/s per core) and training clips/s per worker.

  python -m input_pipeline.benchmark [--data_dir DIR --name NAME] [--videos 64] [--frames 8]
      [--crop 224] [--batch 16] [--batches 40] [--workers 0,2] [--markdown docs/benchmarks.md]

Without `--data_dir` it writes synthetic SSv2-format webm videos at 256 px (the short side of
the prepared SSv2 frames), prepares them with one worker per core and times that; then it
times the training iterator: in this process (`--workers 0`, one core's worth) and with grain
worker processes. Each number is clips per second over `--batches` batches after 3 warm-up
batches; "per worker" divides by the decoding processes.
"""
import json
import multiprocessing
import os
import pathlib
import platform
import sys
import tempfile
import time

import ml_collections
from absl import flags

from input_pipeline import cli_flags, conventions, paths, pipeline, prepare, synthetic
from input_pipeline.errors import run_main


def time_prepare(root: pathlib.Path, videos: int) -> dict:
  manual = root / 'manual'
  synthetic.generate(manual, train=videos, val=8, test=0, size=256, seed=0)
  workers = multiprocessing.cpu_count()
  report = prepare.prepare('ssv2', manual, root / 'data', workers=workers)
  return {'videos': report['videos_written'], 'seconds': report['seconds'], 'workers': workers,
          'videos_per_s': report['videos_written'] / report['seconds'],
          'videos_per_s_per_core': report['videos_written'] / report['seconds'] / workers,
          'frames_per_video': report['frames'] / report['videos_written'],
          'jpeg_kib_per_frame': report['bytes'] / report['frames'] / 1024}


def time_loader(config, batches: int, warmup: int = 3) -> float:
  """Training clips per second of the iterator built from `config`."""
  iterator = iter(pipeline.train_dataset(config))
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * config.batch_size / (time.perf_counter() - start)


def markdown(result: dict) -> str:
  p = result.get('prepare')
  lines = [
      '## Input pipeline',
      '',
      f"Machine: {result['machine']}. Command: `{result['command']}`.",
      '',
  ]
  if p:
    lines += [f"Preparation (synthetic webm, 256 px, {p['frames_per_video']:.0f} frames a video, "
              f"VP9 decode + JPEG encode, {p['jpeg_kib_per_frame']:.1f} KiB a frame): "
              f"{p['videos']} videos in {p['seconds']:.1f} s with {p['workers']} workers = "
              f"**{p['videos_per_s_per_core']:.1f} videos/s per core**.", '']
  lines += ['| loader | decoding processes | clips/s | clips/s per process |', '|---|---|---|---|']
  for row in result['loader']:
    lines.append(f"| {row['frames']} frames, {row['crop']} crop, batch {row['batch']}, "
                 f"{row['dtype']} | {row['processes']} | {row['clips_per_s']:.1f} | "
                 f"{row['clips_per_s_per_process']:.1f} |")
  lines += ['', 'Target: 100 clips/s per core, so 16 cores feed an H100 (~1,000 clips/s). The '
            'in-process row is one core decoding; with as many worker processes as cores the '
            'consuming process shares them, so the per-process figure drops. The synthetic '
            'frames are smaller JPEGs than real SSv2 frames (about 15-25 KiB), which decode '
            'slower.']
  return '\n'.join(lines) + '\n'


def write_section(path: pathlib.Path, section: str) -> None:
  """Replaces the '## Input pipeline' section of `path` (or appends it)."""
  text = path.read_text() if path.exists() else '# Benchmarks\n'
  head, marker, rest = text.partition('## Input pipeline')
  tail = ''
  if marker and '\n## ' in rest:
    tail = rest[rest.index('\n## ') + 1:]
  path.write_text(head.rstrip('\n') + '\n\n' + section + ('\n' + tail if tail else ''))


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('string', 'data_dir', None, 'A prepared dataset (default: make a synthetic one).')
  define('string', 'name', 'something_something_v2', 'The dataset in --data_dir.')
  define('integer', 'videos', 64, 'Synthetic videos to prepare.', lower_bound=1)
  define('integer', 'frames', 8, 'Frames per clip.', lower_bound=1)
  define('integer', 'crop', 224, 'Crop size.', lower_bound=1)
  define('integer', 'batch', 16, 'Clips per batch.', lower_bound=1)
  define('integer', 'batches', 40, 'Batches to time.', lower_bound=1)
  define('list', 'workers', ['0', '2'], 'grain worker counts to time (0: in this process).')
  define('enum', 'dtype', 'float32', ['float32', 'bfloat16'], 'The clips\' dtype.')
  define('string', 'markdown', None, 'Write the results into this markdown file.')
  define('string', 'json', None, 'Write the results as JSON to this file.')


def main(argv=None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  try:
    worker_counts = [int(w) for w in args.workers]
  except ValueError:
    cli_flags.fail(f'--workers {",".join(args.workers)}: give whole numbers')
  result = {'machine': f'{platform.processor() or platform.machine()}, '
                       f'{os.cpu_count()} cores, Python {platform.python_version()}',
            'command': 'python -m input_pipeline.benchmark '
                       + ' '.join(cli_flags.arguments(argv)),
            'loader': []}
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir
    if not data_dir:
      result['prepare'] = time_prepare(pathlib.Path(tmp), args.videos)
      data_dir = str(pathlib.Path(tmp) / 'data')
    for workers in worker_counts:
      config = ml_collections.ConfigDict({  # what the training pipeline reads
          'name': args.name, 'data_dir': data_dir, 'train_split': 'train',
          'num_frames': args.frames, 'crop': args.crop, 'colour': 'bgr255',
          'scales': conventions.TSN_SCALES, 'flip': True, 'batch_size': args.batch,
          'num_workers': workers, 'prefetch': 2, 'seed': 0, 'dtype': args.dtype})
      rate = time_loader(config, args.batches)
      processes = max(workers, 1)
      row = {'frames': args.frames, 'crop': args.crop, 'batch': args.batch, 'dtype': args.dtype,
             'workers': workers, 'processes': processes, 'clips_per_s': rate,
             'clips_per_s_per_process': rate / processes}
      result['loader'].append(row)
      print(f'{processes} decoding process(es): {rate:.1f} clips/s '
            f'({rate / processes:.1f} per process)', flush=True)
  if 'prepare' in result:
    print(f"preparation: {result['prepare']['videos_per_s_per_core']:.1f} videos/s per core")
  if args.markdown:
    write_section(pathlib.Path(paths.expand(args.markdown)), markdown(result))
  if args.json:
    pathlib.Path(paths.expand(args.json)).write_text(json.dumps(result, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(run_main(main))
