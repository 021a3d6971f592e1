r"""Classify your own videos with a trained model.

  python -m cstm_jax.inference.predict --workdir runs/ssv2_16f --video clip.webm [--views 2x3]
  python -m cstm_jax.inference.predict --checkpoint converted/ --config configs/ssv2_16f.py \
      --video frames/
  python -m cstm_jax.inference.predict --workdir runs/ssv2_16f --video my_videos/ \
      --out predictions.csv
  python -m cstm_jax.inference.predict --workdir runs/ssv2_16f --config=runs/ssv2_16f/config.json \
      --config.model.dtype=bfloat16 --video clip.webm    # the run's config, overridden

`--video` is a video file (webm, mp4, ...), a folder of JPEG frames, or a folder of those, which
gives a CSV with one row per video. Stopped (Ctrl-C, SIGTERM), a folder's prediction keeps its
rows so far in `<out>.unfinished`, and the same command resumes from them. Frames go through
exactly the evaluation path: stored as the prepared datasets store them, sampled at the segment
centres (and starts, with 2 clips), resized to the test scale, centre (or three) crops, the
backbone's normalisation; the logits of the views are averaged.
"""
import csv
import hashlib
import io
import json
import pathlib
import sys
from typing import Any, NamedTuple, Optional, Sequence

import flax
import jax
import numpy as np
from absl import flags

from cstm_foundation import cli_flags, paths, stopping
from cstm_foundation.errors import ConfigError
from cstm_foundation.commands import run_main
from cstm_foundation.progress import Progress
from cstm_jax.config import finish, loader
from cstm_jax.distributed import compile_cache, sharding
from cstm_jax.models.torch_weights import describe_mismatch
from cstm_jax.models.build import abstract_variables
from cstm_jax.models.video import num_classes_of
from cstm_jax.train import checkpoints, evaluation, program as program_lib, train_state
from input_pipeline import builders, labels, pipeline, video_io


# --- Model and weights ------------------------------------------------------------------------

class LoadedModel(NamedTuple):
  config: Any  # the run's config (or the one given), finished
  program: Any  # `train.program.Program` on one device: the model and its eval step
  variables: dict  # {'params', 'batch_stats'}
  names: list  # the class names, by label


def load_model(workdir=None, checkpoint=None, config=None, *, which: str = 'best',
               config_name: str = 'the config') -> LoadedModel:
  """The model of a training run (its config.json, or `config` in its place), or of a variables
  checkpoint (`cstm_jax.inference.convert`) plus `config`, the config it belongs to (named
  `config_name` in messages)."""
  if workdir and not checkpoint:
    workdir = paths.resolve(workdir)
    config = config if config is not None else loader.load(workdir / 'config.json')
    names = class_names(config, workdir)
    config = finish.finish(config, num_classes=len(names),
                           classes_from=f'the classes of run {workdir}')
    program = program_lib.build(config, one_device_mesh())
    variables, _ = train_state.restore_variables(program, workdir, which)
  elif checkpoint and config is not None:
    variables = checkpoints.load_variables(checkpoint)
    # num_classes 0 (left to the data) takes the head's count; check_variables reports a set
    # count that differs from it, with the other mismatches.
    classes = config.model.num_classes or num_classes_of(variables['params'])
    if classes is None:
      raise ConfigError(f'{checkpoint} has no classification head and {config_name} sets no '
                        'model.num_classes: give the config of a trained run')
    config = finish.finish(config, num_classes=classes, classes_from=str(checkpoint))
    program = program_lib.build(config, one_device_mesh())
    check_variables(variables, abstract_variables(program.model, program.one_clip()),
                    f'checkpoint {checkpoint}', config_name)
    names = class_names(config)
  else:
    raise ConfigError('give --workdir RUN, or --checkpoint DIR with --config FILE')
  return LoadedModel(config, program, variables, names)


def parse_model_command(argv: Optional[Sequence[str]], doc: str, define) -> flags.FlagValues:
  """The command line of a command that loads a trained model (predict, export): `--workdir`,
  `--which`, `--checkpoint` and an optional `--config` (with overrides), then `define`'s own."""

  def define_all(flag_values):
    define_model = cli_flags.definer(flag_values)
    define_model('string', 'workdir', None,
                 "A training run, local or gs:// (its config.json and checkpoints; --config "
                 "replaces the run's config, and --config.KEY=VALUE overrides need --config, "
                 'e.g. --config=RUN/config.json).')
    define_model('enum', 'which', 'best', ['best', 'latest'], 'Which checkpoint of --workdir.')
    define_model('string', 'checkpoint', None, 'A variables checkpoint (from '
                 'cstm_jax.inference.convert), with --config.')
    define(flag_values)

  return loader.parse_command(
      argv, doc, define_all, config_required=False,
      config_help="The config of --checkpoint, or one replacing the run's.")


def load_model_from_flags(args: flags.FlagValues):
  """`load_model` for the flags of `parse_model_command`."""
  config, config_name = loader.from_flag(args)
  compile_cache.enable(compile_cache.config_setting(config))
  return load_model(args.workdir, args.checkpoint, config, which=args.which,
                    config_name=config_name)


def one_device_mesh() -> jax.sharding.Mesh:
  """Predictions run on one device: a video's views are a small batch."""
  return sharding.make_mesh(1, jax.devices()[:1])


def check_variables(variables, expected, what: str, against: str) -> None:
  """Every array of `expected` present in `variables` with its shape, and nothing else."""
  flat = lambda tree: {k: np.shape(v) for k, v in flax.traverse_util.flatten_dict(
      flax.core.unfreeze(tree), sep='/').items()}
  have, want = flat(variables), flat(expected)
  shapes = sorted(f'{k} {have[k]} (model {want[k]})' for k in set(have) & set(want)
                  if tuple(have[k]) != tuple(want[k]))
  problems = describe_mismatch(sorted(set(want) - set(have)), sorted(set(have) - set(want)),
                               shapes)
  if problems:
    raise ConfigError(f'{what} does not match the model of {against}: {problems}')


def class_names(config, workdir=None) -> list[str]:
  """The run's classes.json, else the prepared dataset's names, else class_0, class_1, ..."""
  if workdir and (paths.resolve(workdir) / 'classes.json').exists():
    return json.loads((paths.resolve(workdir) / 'classes.json').read_text())
  try:
    return list(pipeline.open_split(config.data, config.data.eval_split)[1])
  except (FileNotFoundError, ValueError):
    return [f'class_{i}' for i in range(config.model.num_classes)]


# --- Videos -----------------------------------------------------------------------------------

def is_frame_folder(path: pathlib.Path) -> bool:
  return path.is_dir() and any(p.suffix.lower() in ('.jpg', '.jpeg') for p in path.iterdir())


def list_videos(path: pathlib.Path) -> list[pathlib.Path]:
  """The videos of a folder of videos: video files and frame folders, sorted by name."""
  return sorted(p for p in path.iterdir()
                if p.suffix.lower() in labels.VIDEO_SUFFIXES or is_frame_folder(p))


def video_views(path: pathlib.Path, config, views: str) -> np.ndarray:
  """Normalised evaluation views `[V, T, crop, crop, 3]` of one video, as evaluation makes them."""
  short_side = None if path.is_dir() else builders.SomethingSomethingV2.DEFAULT_SHORT_SIDE
  jpegs = video_io.video_to_jpegs(path, short_side)
  transform = pipeline.eval_transform(config.data, evaluation.parse_views(views))
  return transform({'frames': jpegs, 'label': 0, 'index': 0})['clips']


# --- Prediction -------------------------------------------------------------------------------

class Predictor:
  """Probabilities of every class for one video at a time (views averaged in logit space)."""

  def __init__(self, loaded: LoadedModel, *, views: str = '1x1'):
    self.config, self.variables, self.names = loaded.config, loaded.variables, loaded.names
    self.views = views
    self._step = loaded.program.eval_step

  def probabilities(self, path: pathlib.Path) -> np.ndarray:
    clips = video_views(path, self.config, self.views)
    logits, _ = self._step(self.variables, {'clips': clips[None]})
    return np.asarray(jax.nn.softmax(logits[0]))

  def top(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities)[:k]
    return [(self.names[i], float(probabilities[i])) for i in order]


def weights_fingerprint(variables) -> str:
  """16 hex digits of SHA-256 over the variables' names, shapes, dtypes and values."""
  digest = hashlib.sha256()
  for name, value in sorted(flax.traverse_util.flatten_dict(flax.core.unfreeze(variables),
                                                            sep='/').items()):
    array = np.asarray(value)
    digest.update(f'{name} {array.shape} {array.dtype}'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()[:16]


UNFINISHED_MARK = '# cstm-predict unfinished: '


def _unfinished_rows(unfinished, settings: dict, header: list[str]) -> list[list[str]]:
  """The rows a stopped prediction with the same `settings` left in `unfinished` (written in the
  order of the videos their settings name); [] and a line saying why when there are none."""
  if not unfinished.exists():
    return []
  mark, _, table = unfinished.read_text().partition('\n')
  try:
    left = json.loads(mark.removeprefix(UNFINISHED_MARK))
  except ValueError:
    left = None
  rows = list(csv.reader(io.StringIO(table)))
  if left == settings and rows[:1] == [header]:
    return rows[1:]
  differ = (', '.join(k for k in settings if left.get(k) != settings[k])
            if isinstance(left, dict) else '')
  print(f'{unfinished}: ' + (f'left by a stopped prediction with other {differ}' if differ else
                             'not the rows of a stopped prediction') +
        '; predicting every video again', file=sys.stderr)
  return []


def predict_folder(predictor: Predictor, videos, topk: int, out, *,
                   settings: Optional[dict] = None) -> dict:
  """Writes one CSV row per video (top-k names and probabilities, or the error) to `out`
  (local or gs://), whole at the end. A stop request writes the rows so far, with `settings`
  (what makes them valid: the weights, views, videos), to `<out>.unfinished` and stops; the same
  call with the same settings resumes from them."""
  out = paths.resolve(out)
  unfinished = out.with_name(out.name + '.unfinished')
  names = [v.name for v in videos]
  settings = {**(settings or {}), 'topk': topk, 'videos': f'{len(names)} named '
              + hashlib.sha256('\n'.join(names).encode()).hexdigest()[:16]}
  header = ['video'] + [c for i in range(1, topk + 1)
                        for c in (f'class_{i}', f'probability_{i}')] + ['error']
  rows = _unfinished_rows(unfinished, settings, header)
  if rows:
    print(f'resuming {unfinished}: {len(rows)} of {len(videos)} videos were predicted before '
          'its stop', file=sys.stderr)
  failed = sum(1 for row in rows if row[-1])
  table = io.StringIO()
  writer = csv.writer(table)
  writer.writerows([header] + rows)
  todo = videos[len(rows):]
  with Progress(len(todo), 'videos') as progress:
    for video in todo:
      if stopping.requested():  # the rows so far are kept; the rest is predicted on resume
        paths.write_text(unfinished, UNFINISHED_MARK + json.dumps(settings) + '\n' +
                         table.getvalue())
        raise stopping.Stopped(stopping.message(
            f'predicting after {len(videos) - len(todo) + progress.count} of {len(videos)} '
            f'videos ({unfinished} holds their rows)'))
      try:
        ranked = predictor.top(predictor.probabilities(video), topk)
        writer.writerow([video.name] + [v for pair in ranked for v in
                                        (pair[0], f'{pair[1]:.6f}')] + [''])
      except video_io.VideoError as e:
        failed += 1
        print(f'{video}: {e} (skipped)', file=sys.stderr)
        writer.writerow([video.name] + [''] * (2 * topk) + [str(e)])
      progress.update()
  paths.write_text(out, table.getvalue())
  if unfinished.exists():
    unfinished.unlink()
  return {'videos': len(videos), 'failed': failed, 'csv': str(out)}


def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('string', 'video', None, 'A video file, a JPEG frame folder, or a folder of either.',
         required=True)
  define('string', 'views', '1x1', "The test protocol, clips x crops: '1x1', '2x3', '1x10', "
         "'2x3full' (crops of the test scale) ... (docs/training.md).")
  define('integer', 'topk', 5, 'Classes to list.', lower_bound=1)
  define('bool', 'json', False, 'Print JSON instead of a table.')
  define('string', 'out', 'predictions.csv',
         'The CSV for a folder of videos (local or gs://); written whole at the end.')


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_model_command(argv, __doc__, define_flags)

  # Every argument is checked before the model is loaded.
  video = pathlib.Path(paths.expand(args.video))
  if not video.exists():
    cli_flags.fail(f'{video}: no such video file or folder')
  try:
    evaluation.parse_views(args.views)
  except ConfigError as e:
    cli_flags.fail(f'--views: {e}')
  loaded = load_model_from_flags(args)
  names = loaded.names
  predictor = Predictor(loaded, views=args.views)

  if video.is_dir() and not is_frame_folder(video):
    videos = list_videos(video)
    if not videos:
      cli_flags.fail(f'{video}: no video files or frame folders in it')
    summary = predict_folder(predictor, videos, args.topk, args.out, settings={
        'folder': str(video.absolute()), 'views': args.views,
        'weights': weights_fingerprint(loaded.variables)})
    print(json.dumps(summary) if args.json else
          f"wrote {summary['csv']}: {summary['videos']} videos, {summary['failed']} unreadable")
    return 0
  try:
    ranked = predictor.top(predictor.probabilities(video), args.topk)
  except video_io.VideoError as e:
    print(f'{video}: {e}', file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps({'video': str(video), 'views': args.views,
                      'top': [{'class': n, 'probability': p} for n, p in ranked]}))
  else:
    source = args.checkpoint or f'{args.workdir} ({args.which} checkpoint)'
    print(f'{video}: top {len(ranked)} of {len(names)} classes, {args.views} views, {source}')
    for name, probability in ranked:
      print(f'{probability:8.4f}  {name}')
  return 0


def cli() -> int:
  """The `cstm-predict` command (`python -m cstm_jax.inference.predict`)."""
  return run_main(main, at_safe_points=True)


if __name__ == '__main__':
  sys.exit(cli())
