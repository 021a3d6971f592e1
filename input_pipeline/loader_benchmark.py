"""Input pipeline speed: preparation (videos/s per core), training clips/s per loader process,
the bytes each clip sends to the device, and where a clip's time goes.

  python -m input_pipeline.loader_benchmark [--background texture|flat] [--videos 64] [--frames 8]
      [--crop 224] [--batch 16] [--batches 40] [--workers 0,2] [--markdown docs/benchmarks.md]
  python -m input_pipeline.loader_benchmark --data_dir ~/tensorflow_datasets   # a prepared dataset

Without `--data_dir` it writes synthetic SSv2-format webm videos and prepares them with one
worker per core (timed). `--background texture` (the default) films the objects over a camera
moving across a photograph at SSv2's 240 px height, so the prepared frames (short side 256)
are natural images about as large as real SSv2's JPEGs; `flat` gives the demo's small frames.
Then it times the training iterator in this process (`--workers 0`: one core decoding) and
with grain worker processes: clips per second over `--batches` batches after 3 warm-up ones,
"per process" divided by the decoding processes. Clips leave the host as uint8 RGB; the steps
normalise them on the device. The stage breakdown times each step of a training clip in this
process: reading the record, decoding the sampled JPEGs, crop + resize + flip, stacking the
batch.
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
import numpy as np
from absl import flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.commands import run_main
from input_pipeline import conventions, pipeline, prepare, sampling, synthetic, transforms

# Synthetic video height per background: texture clips at SSv2's own 240 px (prepare resizes the
# short side to 256, as it does real SSv2); flat clips at 256.
VIDEO_HEIGHT = {'texture': 240, 'flat': 256}


def time_prepare(root: pathlib.Path, videos: int, background: str) -> dict:
  manual = root / 'manual'
  synthetic.generate(manual, train=videos, val=8, test=0, size=VIDEO_HEIGHT[background], seed=0,
                     background=background)
  workers = multiprocessing.cpu_count()
  report = prepare.prepare('ssv2', manual, root / 'data', workers=workers)
  return {'videos': report['videos_written'], 'seconds': report['seconds'], 'workers': workers,
          'videos_per_s': report['videos_written'] / report['seconds'],
          'videos_per_s_per_core': report['videos_written'] / report['seconds'] / workers,
          'frames_per_video': report['frames'] / report['videos_written'],
          'jpeg_kib_per_frame': report['bytes'] / report['frames'] / 1024}


SSV2_TRAIN_VIDEOS = 168_913


class Tiled:
  """`records` repeated to `size` entries. grain's index shuffle costs each element more the
  smaller the dataset (docs/benchmarks.md), so a small benchmark dataset is shuffled as if it
  had SSv2's size."""

  def __init__(self, records, size: int):
    self._records, self._size = records, max(size, len(records))

  def __len__(self):
    return self._size

  def __getitem__(self, index):
    return self._records[index % len(self._records)]


def loader_config(*, name: str, data_dir: str, frames: int, crop: int, batch: int,
                  workers: int = 0) -> ml_collections.ConfigDict:
  """The `config.data` keys the training loader reads, for timing it on a prepared dataset."""
  return ml_collections.ConfigDict({
      'name': name, 'data_dir': data_dir, 'train_split': 'train', 'num_frames': frames,
      'crop': crop, 'scales': conventions.TSN_SCALES, 'flip': True,
      'flip_label_swap': True, 'batch_size': batch,
      'num_workers': workers, 'prefetch': 2, 'seed': 0})


def time_loader(config, batches: int, warmup: int = 3) -> float:
  """Training clips per second of the iterator built from `config`, its records tiled to
  SSv2's size (`Tiled`)."""
  records = Tiled(pipeline.open_split(config, config.train_split)[0], SSV2_TRAIN_VIDEOS)
  iterator = iter(pipeline.train_dataset(config, records=records))
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * config.batch_size / (time.perf_counter() - start)


def stage_breakdown(config, clips: int) -> dict:
  """Milliseconds per training clip of each stage, in this process: `TrainTransform`'s work
  (`transforms.train_clip` in its two halves) and the batching, timed one by one."""
  source, _ = pipeline.open_split(config, config.train_split)
  rng = np.random.default_rng(0)
  spent = dict.fromkeys(('read', 'decode', 'crop_resize_flip', 'batch'), 0.0)
  batch = []
  for i in range(clips):
    tick = time.perf_counter()
    record = source[i % len(source)]
    jpegs = record['frames']
    spent['read'] += time.perf_counter() - tick
    tick = time.perf_counter()
    indices = sampling.train_indices(len(jpegs), config.num_frames, rng)
    frames = transforms.decode_frames(jpegs, indices)
    spent['decode'] += time.perf_counter() - tick
    tick = time.perf_counter()
    clip, _ = transforms.train_crop(frames, indices, config.crop, rng=rng, flip=config.flip,
                                    scales=config.scales)
    spent['crop_resize_flip'] += time.perf_counter() - tick
    batch.append(clip)
    if len(batch) == config.batch_size:
      tick = time.perf_counter()
      np.stack(batch)
      spent['batch'] += time.perf_counter() - tick
      batch = []
  per_clip = {stage: 1e3 * seconds / clips for stage, seconds in spent.items()}
  return {'ms_per_clip': per_clip, 'clips_per_s': 1e3 / sum(per_clip.values()),
          'decode_only_clips_per_s': 1e3 / per_clip['decode']}


def markdown(result: dict) -> str:
  p, stages = result.get('prepare'), result['stages']
  lines = [
      '## Input pipeline',
      '',
      f"Machine: {result['machine']}. Command: `{result['command']}`.",
      '',
  ]
  if p:
    lines += [f"Preparation ({result['background']} synthetic webm at "
              f"{VIDEO_HEIGHT[result['background']]} px, {p['frames_per_video']:.0f} frames a "
              f"video, VP9 decode + JPEG encode at short side 256: "
              f"**{p['jpeg_kib_per_frame']:.1f} KiB a frame**): {p['videos']} videos in "
              f"{p['seconds']:.1f} s with {p['workers']} workers = "
              f"**{p['videos_per_s_per_core']:.1f} videos/s per core**.", '']
  lines += ['| loader | decoding processes | clips/s | clips/s per process | bytes per clip to '
            'the device |', '|---|---|---|---|---|']
  for row in result['loader']:
    lines.append(f"| {row['frames']} frames, {row['crop']} crop, batch {row['batch']}, uint8 | "
                 f"{row['processes']} | {row['clips_per_s']:.1f} | "
                 f"{row['clips_per_s_per_process']:.1f} | {row['bytes_per_clip']:,} |")
  lines += ['', "Columns: the clips of a batch; the decoding processes (grain's workers; 1: in the "
            'consuming process); clips/s over all of them and per process; the bytes a clip sends '
            'to the device.']
  total = sum(stages['ms_per_clip'].values())
  lines += ['', f"Where a training clip's time goes, in one process ({stages['clips']} clips; "
            f"{stages['clips_per_s']:.0f} clips/s without grain's overhead, decoding alone "
            f"{stages['decode_only_clips_per_s']:.0f}):", '',
            '| stage | ms per clip | share |', '|---|---|---|']
  for stage, ms in stages['ms_per_clip'].items():
    lines.append(f'| {stage.replace("_", " ")} | {ms:.2f} | {100 * ms / total:.0f}% |')
  lines += ['', 'Clips leave the host as uint8 RGB, a quarter of float32\'s bytes; conversion to '
            'float, the colour order, mean and scale run inside the jitted step '
            '(`cstm_jax/models/video.py`). The loader is timed over the records tiled to SSv2\'s '
            f'training size ({SSV2_TRAIN_VIDEOS:,}): grain\'s index shuffle costs each '
            'element more the smaller the dataset. With as many worker processes as cores the '
            'consuming process shares them, so the per-process figure drops.']
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
  define('enum', 'background', 'texture', list(synthetic.BACKGROUNDS), 'Synthetic frames: '
         'texture (natural images, the size of real SSv2 frames) or flat (the demo\'s).')
  define('integer', 'videos', 64, 'Synthetic videos to prepare.', lower_bound=1)
  define('integer', 'frames', 8, 'Frames per clip.', lower_bound=1)
  define('integer', 'crop', 224, 'Crop size.', lower_bound=1)
  define('integer', 'batch', 16, 'Clips per batch.', lower_bound=1)
  define('integer', 'batches', 40, 'Batches to time.', lower_bound=1)
  define('list', 'workers', ['0', '2'], 'grain worker counts to time (0: in this process).')
  define('integer', 'stage_clips', 320, 'Training clips timed stage by stage.', lower_bound=1)
  define('string', 'markdown', None, 'Write the results into this markdown file.')
  define('string', 'json', None, 'Write the results as JSON to this file.')


def main(argv=None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  try:
    worker_counts = [int(w) for w in args.workers]
  except ValueError:
    cli_flags.fail(f'--workers {",".join(args.workers)}: give whole numbers')
  result = {
      'machine': f'{platform.processor() or platform.machine()}, '
                 f'{os.cpu_count()} cores, Python {platform.python_version()}',
      'command': 'python -m input_pipeline.loader_benchmark ' + ' '.join(cli_flags.arguments(argv)),
      'background': None if args.data_dir else args.background,
      'loader': []
  }
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir
    if not data_dir:
      result['prepare'] = time_prepare(pathlib.Path(tmp), args.videos, args.background)
      data_dir = str(pathlib.Path(tmp) / 'data')
    config = loader_config(name=args.name, data_dir=data_dir, frames=args.frames,
                           crop=args.crop, batch=args.batch)
    for workers in worker_counts:
      config.num_workers = workers
      rate = time_loader(config, args.batches)
      processes = max(workers, 1)
      row = {'frames': args.frames, 'crop': args.crop, 'batch': args.batch, 'workers': workers,
             'processes': processes, 'clips_per_s': rate,
             'clips_per_s_per_process': rate / processes,
             'bytes_per_clip': args.frames * args.crop * args.crop * 3}
      result['loader'].append(row)
      print(f'{processes} decoding process(es): {rate:.1f} clips/s '
            f'({rate / processes:.1f} per process)', flush=True)
    result['stages'] = {'clips': args.stage_clips, **stage_breakdown(config, args.stage_clips)}
  print('ms per clip: ' + ', '.join(f'{stage} {ms:.2f}' for stage, ms in
                                    result['stages']['ms_per_clip'].items()))
  if 'prepare' in result:
    print(f"preparation: {result['prepare']['videos_per_s_per_core']:.1f} videos/s per core, "
          f"{result['prepare']['jpeg_kib_per_frame']:.1f} KiB per frame")
  if args.markdown:
    write_section(pathlib.Path(paths.expand(args.markdown)), markdown(result))
  if args.json:
    pathlib.Path(paths.expand(args.json)).write_text(json.dumps(result, indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(run_main(main))
