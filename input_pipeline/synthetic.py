"""A synthetic temporal dataset in the real Something-Something v2 file format.

  python -m input_pipeline.synthetic --out DIR [--train N] [--val N] [--test N] [--size PX]
      [--seed S] [--format webm|frames] [--layout ssv1|jester] [--background flat|texture]
      [--workers N]

Writes `DIR/something-something-v2-{labels,train,validation,test}.json` and
`DIR/20bn-something-something-v2/<id>.webm` (VP9, 12 fps), laid out exactly as the real
download, or with `--format frames` the SSv1 / Jester layout (csv files and JPEG frame folders).

Classes come in time-reversed pairs (left to right / right to left, up / down, closer / away,
clockwise / counterclockwise, appear / disappear) plus two that read the same both ways. One
clip of a class played backwards is a clip of its partner, drawn from the same distribution,
so a model that ignores frame order (TSN) cannot beat chance inside a pair. Clips vary the
object's shape, colour, size, speed, timing and start position, over cluttered backgrounds,
with a moving distractor and pixel noise. The same seed gives the same dataset.

`--background texture` films the objects over a camera panning and zooming across a photograph
(the two scikit-learn ships): at `--size 240` (SSv2's height) the prepared frames are natural
images about as large as real SSv2's JPEGs, for measuring the loader on realistic input.
"""
if __name__ == '__main__':  # stop requests from the first moment, before the imports below
  from cstm_foundation import stopping as _stopping
  _stopping.install(at_safe_points=True)

import functools
import json
import math
import multiprocessing
import os
import pathlib
import shutil
import sys

import cv2
import numpy as np
from absl import flags

from cstm_foundation import cli_flags, paths, stopping
from cstm_foundation.commands import run_main
from cstm_foundation.progress import Progress
from input_pipeline import labels, video_io, worker_pools

TEMPLATES = (
    'Moving [something] from left to right',
    'Moving [something] from right to left',
    'Moving [something] up',
    'Moving [something] down',
    'Moving [something] closer to the camera',
    'Moving [something] away from the camera',
    'Turning [something] clockwise',
    'Turning [something] counterclockwise',
    'Making [something] appear',
    'Making [something] disappear',
    'Pretending to move [something]',
    'Holding [something] still',
)
# Each class's motion: (kind, direction); direction -1 is the time reversal of +1.
MOTIONS = (('x', 1), ('x', -1), ('y', -1), ('y', 1), ('scale', 1), ('scale', -1),
           ('turn', 1), ('turn', -1), ('alpha', 1), ('alpha', -1), ('pretend', 0), ('still', 0))
SHAPES = {'triangle': 3, 'square': 4, 'pentagon': 5, 'hexagon': 6, 'disc': 16}
COLOURS = {'red': (220, 40, 40), 'green': (40, 190, 60), 'blue': (40, 80, 220),
           'yellow': (230, 210, 40), 'purple': (150, 50, 190), 'orange': (240, 130, 30),
           'white': (240, 240, 240), 'cyan': (40, 200, 210)}
FPS = 12
BACKGROUNDS = ('flat', 'texture')
TEXTURE_CRF = 20  # VP9 quality of texture clips: prepared frames of about real SSv2's size
SETTINGS = '.synthetic.json'  # beside the clips: the settings they were made with
RESUMES = 'the same command resumes'


def class_names() -> list[str]:
  return [labels.ssv2_template_to_class(t) for t in TEMPLATES]


def time_reversed_pairs() -> list[tuple[int, int]]:
  """Class index pairs whose clips are each other's played backwards."""
  return [(i, j) for i, (kind, d) in enumerate(MOTIONS) for j, (kind2, d2) in enumerate(MOTIONS)
          if i < j and kind == kind2 and d == -d2 != 0]


def _polygon(centre, radius, sides, angle):
  t = angle + np.arange(sides) * 2 * np.pi / sides
  points = np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], -1)
  return np.round(points * 16).astype(np.int32)  # 4 fractional bits for cv2's shift=4


def _draw_object(canvas, centre, radius, *, sides, angle, colour, alpha=1.0):
  """A filled polygon with a dark hand from its centre toward `angle` ending in a marker, so
  turning is visible even at 32 pixels."""
  if alpha <= 0.02 or radius < 1:
    return
  layer = canvas.copy()
  cv2.fillPoly(layer, [_polygon(centre, radius, sides, angle)], colour, cv2.LINE_AA, shift=4)
  tip = (centre[0] + 1.1 * radius * math.cos(angle), centre[1] + 1.1 * radius * math.sin(angle))
  cv2.line(layer, (round(centre[0] * 16), round(centre[1] * 16)),
           (round(tip[0] * 16), round(tip[1] * 16)), (20, 20, 20),
           max(1, round(radius * 0.35)), cv2.LINE_AA, shift=4)
  marker = (centre[0] + 0.6 * radius * math.cos(angle),
            centre[1] + 0.6 * radius * math.sin(angle))
  cv2.circle(layer, (round(marker[0] * 16), round(marker[1] * 16)),
             round(max(1.0, radius * 0.45) * 16), (20, 20, 20), -1, cv2.LINE_AA, shift=4)
  cv2.addWeighted(layer, alpha, canvas, 1 - alpha, 0, dst=canvas)


@functools.cache
def sample_photos() -> tuple[np.ndarray, ...]:
  """The two photographs scikit-learn ships (427 x 640 RGB): natural-image texture."""
  from sklearn.datasets import load_sample_images  # only the texture background needs it
  return tuple(load_sample_images().images)


def _flat_scene(rng: np.random.Generator, height: int, width: int):
  """A flat background with static clutter: `frame(t)` gives the same scene every frame."""
  scene = np.empty((height, width, 3), np.uint8)
  scene[:] = rng.integers(40, 200, 3)
  for _ in range(rng.integers(3, 7)):
    x, y = rng.integers(0, width), rng.integers(0, height)
    size = rng.integers(height // 12, height // 5)
    cv2.rectangle(scene, (int(x), int(y)), (int(x + size), int(y + size // 2)),
                  tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
  return lambda t: scene.copy()


def _texture_scene(rng: np.random.Generator, height: int, width: int, num_frames: int):
  """A camera panning and zooming over a photograph: frames with the detail and the JPEG size
  of real footage."""
  photos = sample_photos()
  photo = photos[rng.integers(len(photos))]
  if rng.random() < 0.5:
    photo = photo[:, ::-1]
  photo_h, photo_w = photo.shape[:2]
  aspect = width / height
  zoom0, zoom1 = rng.uniform(0.5, 0.9, 2)  # window height as a fraction of the photo's
  start, end = rng.uniform(0, 1, 2), rng.uniform(0, 1, 2)  # window centre, in free space

  def frame(t):
    p = t / max(num_frames - 1, 1)
    h = photo_h * (zoom0 + (zoom1 - zoom0) * p)
    w = min(h * aspect, photo_w)
    cx, cy = start + (end - start) * p
    x, y = int(cx * (photo_w - w)), int(cy * (photo_h - h))
    window = photo[y:y + int(h), x:x + int(w)]
    return cv2.resize(window, (width, height), interpolation=cv2.INTER_AREA)

  return frame


def _setup(rng: np.random.Generator, height: int, num_frames: int, background: str):
  """A clip's first draws: (width, its scene, the object's shape and colour)."""
  width = (height * 4 // 3) // 2 * 2
  if background not in BACKGROUNDS:
    raise ValueError(f'background {background!r}: expected one of {BACKGROUNDS}')
  scene = (_texture_scene(rng, height, width, num_frames) if background == 'texture' else
           _flat_scene(rng, height, width))
  return width, scene, rng.choice(list(SHAPES)), rng.choice(list(COLOURS))


def render_clip(class_index: int, rng: np.random.Generator, height: int, *, num_frames: int,
                background: str = 'flat'):
  """Frames `[T][H, W, 3]` uint8 of one clip of `class_index`, and the object's description.
  `background`: 'flat' (a plain colour with clutter) or 'texture' (a moving photograph)."""
  width, scene, shape, colour = _setup(rng, height, num_frames, background)
  kind, direction = MOTIONS[class_index]
  sides, rgb = SHAPES[shape], COLOURS[colour]
  radius = height * rng.uniform(0.12, 0.19)
  start, stop = rng.uniform(0.0, 0.3), rng.uniform(0.7, 1.0)  # symmetric under reversal
  x0, y0 = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
  travel = rng.uniform(0.25, 0.4)
  angle0 = rng.uniform(0, 2 * np.pi)
  distractor = (rng.uniform(0, width), rng.uniform(0, height),  # start, velocity, radius
                rng.uniform(-1, 1) * width / num_frames, rng.uniform(-1, 1) * height / num_frames,
                height * rng.uniform(0.04, 0.07))
  frames = []
  for t in range(num_frames):
    p = float(np.clip((t / max(num_frames - 1, 1) - start) / (stop - start), 0, 1))
    p = p if direction >= 0 else 1 - p  # the partner class is the same motion reversed
    x, y, r, angle, alpha = x0, y0, radius, angle0, 1.0
    if kind == 'x':
      x = x0 + (p - 0.5) * travel * width
    elif kind == 'y':
      y = y0 + (p - 0.5) * travel * height * 1.2
    elif kind == 'scale':
      r = radius * (0.55 + 1.0 * p)
    elif kind == 'turn':
      angle = angle0 + p * 1.5 * np.pi  # three quarters of a turn
    elif kind == 'alpha':
      alpha = p
    elif kind == 'pretend':
      x = x0 + math.sin(math.pi * p) * 0.2 * width
    frame = scene(t)
    dx, dy = distractor[2] * t, distractor[3] * t
    cv2.circle(frame, (int(distractor[0] + dx) % width, int(distractor[1] + dy) % height),
               int(distractor[4]), (90, 90, 90), -1, cv2.LINE_AA)
    _draw_object(frame, (x, y), r, sides=sides, angle=angle, colour=rgb, alpha=alpha)
    noise = rng.normal(0, 6, frame.shape)
    frames.append(np.clip(frame + noise, 0, 255).astype(np.uint8))
  return frames, f'{colour} {shape}'


def _describe(job) -> str:
  """The object of the clip `job` describes ('red square'), without rendering it: the clip's
  first draws from its own seed."""
  _, _, _, _, _, seed, height, background = job
  rng = np.random.default_rng(seed)
  num_frames = int(rng.integers(16, 33))
  _, _, shape, colour = _setup(rng, height, num_frames, background)
  return f'{colour} {shape}'


def _output(job) -> pathlib.Path:
  """Where clip `job` is written: a webm file, or a folder of JPEG frames."""
  out, fmt, layout, video_id = job[:4]
  if fmt == 'webm':
    return pathlib.Path(out) / labels.SSV2_VIDEOS / f'{video_id}.webm'
  return pathlib.Path(out) / labels.FRAME_LAYOUTS[layout][1] / video_id


def _write_one(job):
  """Renders and writes one clip; runs in a worker process. The clip appears under its name
  once whole (written under a temporary name, then renamed), so a stop never leaves a part."""
  out, fmt, layout, video_id, class_index, seed, height, background = job
  rng = np.random.default_rng(seed)
  frames, thing = render_clip(class_index, rng, height, num_frames=int(rng.integers(16, 33)),
                              background=background)
  final = _output(job)
  temporary = final.with_name(f'.{final.stem}.partial{final.suffix}')  # av reads the suffix
  if fmt == 'webm':
    video_io.write_webm(temporary, frames, FPS,
                        crf=TEXTURE_CRF if background == 'texture' else 30)
  else:
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for i, frame in enumerate(frames, 1):
      (temporary / f'{i:05d}.jpg').write_bytes(video_io.encode_jpeg(frame))
    shutil.rmtree(final, ignore_errors=True)  # a clip of other settings (a rename keeps none)
  os.replace(temporary, final)
  return video_id, thing


def generate(out, train=240, val=60, *, test=12, size=64, seed=0, fmt='webm', layout='ssv1',
             workers=None, background='flat'):
  """Writes the dataset under `out`; returns {split: [(id, class name)]}. Clips already there
  (a stopped run's) are kept: the same command continues where it stopped."""
  out = pathlib.Path(paths.expand(out))
  names = class_names()
  if fmt not in ('webm', 'frames'):
    raise ValueError(f"unknown format {fmt!r}; expected 'webm' or 'frames'")
  splits = {'train': train, 'validation': val, 'test': test}
  jobs, assignment = [], {}
  rng = np.random.default_rng(seed)
  next_id = 1
  for split_number, (split, count) in enumerate(splits.items()):
    classes = rng.permutation(np.arange(count) % len(names))  # balanced, shuffled
    assignment[split] = []
    for i, c in enumerate(classes):
      video_id = str(next_id)
      next_id += 1
      assignment[split].append((video_id, int(c)))
      jobs.append((str(out), fmt, layout, video_id, int(c), [seed, split_number, i], size,
                   background))
  folder = _output(jobs[0]).parent if jobs else out
  folder.mkdir(parents=True, exist_ok=True)
  for leftover in folder.glob('.*.partial*'):  # a killed run's clip in the making
    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
  # Clips are kept only when made with these settings (a run with another seed or size
  # writes every clip again).
  settings = json.dumps({'splits': splits, 'size': size, 'seed': seed, 'format': fmt,
                         'layout': layout, 'background': background})
  marker = out / SETTINGS
  same = marker.exists() and marker.read_text() == settings
  if not same:
    marker.write_text(settings)
  written = [job for job in jobs if same and _output(job).exists()]
  things = {job[3]: _describe(job) for job in written}
  todo = [job for job in jobs if job[3] not in things]
  if written:
    print(f'synthetic: resuming in {out}: {len(written)} of {len(jobs)} videos are written, '
          f'{len(todo)} to go', file=sys.stderr, flush=True)
  workers = workers or multiprocessing.cpu_count()
  what = f'writing synthetic videos to {out}'
  with Progress(len(jobs), 'videos', 'synthetic') as bar:
    bar.update(len(written))
    try:
      for video_id, thing in worker_pools.imap(_write_one, todo, workers=workers, ordered=False,
                                               what=what, resumes=RESUMES):
        things[video_id] = thing
        bar.update()
    except stopping.Stopped:
      raise stopping.Stopped(stopping.message(f'{what} after {len(things)} of {len(jobs)}',
                                              resumes=RESUMES)) from None
  _write_annotations(out, fmt, layout, names=names, assignment=assignment, things=things)
  return {s: [(v, names[c]) for v, c in items] for s, items in assignment.items()}


def _write_annotations(out, fmt, layout, *, names, assignment, things):
  if fmt == 'webm':
    prefix = labels.SSV2_PREFIX
    (out / f'{prefix}-labels.json').write_text(
        json.dumps({n: str(i) for i, n in enumerate(names)}, indent=1))
    for split, items in assignment.items():
      if split == 'test':
        records = [{'id': v} for v, _ in items]
      else:
        records = [{'id': v, 'template': TEMPLATES[c],
                    'label': TEMPLATES[c].replace('[something]', things[v]).replace(
                        '[Something]', things[v]).lower(),
                    'placeholders': [things[v]]} for v, c in items]
      (out / f'{prefix}-{split}.json').write_text(json.dumps(records, indent=1))
  else:
    prefix = labels.FRAME_LAYOUTS[layout][0]
    (out / f'{prefix}-labels.csv').write_text(''.join(f'{n}\n' for n in names))
    for split, items in assignment.items():
      lines = [v if split == 'test' else f'{v};{names[c]}' for v, c in items]
      (out / f'{prefix}-{split}.csv').write_text(''.join(f'{line}\n' for line in lines))


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('string', 'out', None, 'The output folder (the "manual dir" of prepare).', required=True)
  define('integer', 'train', 240, 'Training videos.', lower_bound=0)
  define('integer', 'val', 60, 'Validation videos.', lower_bound=0)
  define('integer', 'test', 12, 'Unlabelled test videos.', lower_bound=0)
  define('integer', 'size', 64, 'Frame height in pixels (even, at least 16).', lower_bound=16)
  define('integer', 'seed', 0, 'The same seed gives the same dataset.')
  define('enum', 'format', 'webm', ['webm', 'frames'], 'webm videos (SSv2) or JPEG frame folders.')
  define('enum', 'layout', 'ssv1', sorted(labels.FRAME_LAYOUTS), 'File names of the frames '
         'format.')
  define('enum', 'background', 'flat', list(BACKGROUNDS), "flat: a plain colour with clutter "
         "(small files, the demo's); texture: a camera panning and zooming over a photograph, "
         'frames as detailed as real footage (for loader benchmarks).')
  define('integer', 'workers', None, 'Processes (default: all cores).', lower_bound=1)


def main(argv=None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  if args.size % 2:
    cli_flags.fail(f'--size {args.size}: give an even number of pixels')
  written = generate(args.out, args.train, args.val, test=args.test, size=args.size, seed=args.seed,
                     fmt=args.format, layout=args.layout, workers=args.workers,
                     background=args.background)
  print(f'wrote {sum(map(len, written.values()))} videos ({args.format}) of '
        f'{len(class_names())} classes to {args.out}')
  return 0


def cli() -> int:
  """The `cstm-synthetic` command (`python -m input_pipeline.synthetic`)."""
  return run_main(main, at_safe_points=True)


if __name__ == '__main__':
  sys.exit(cli())
