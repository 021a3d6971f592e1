"""Chaos for `prepare`: a preparation stopped at random moments, started again after each stop,
must end with the dataset an uninterrupted preparation makes.

  python -m tools.chaos_prepare [--kills 5] [--videos 400] [--seed S] [--out DIR]

It writes a synthetic SSv2-format download (with a truncated video, a garbage one, a missing one
and an unknown class, so the skip report has rows), prepares it once without interruption, then
again with `--kills` stops, each at a random moment of a start (uniform over the uninterrupted
run's duration) and of a random kind: SIGKILL to the command, SIGKILL to its whole process
group (a lost VM), SIGTERM to the group (a preemption, `scancel`) or SIGINT to it (Ctrl-C).
After each stop the same command starts again, until it ends. It then checks, and prints in a
JSON report:
- every split holds the uninterrupted preparation's examples, in the same order (their
  content: ids, labels and frame bytes; two clean preparations differ in bytes on the wire);
- `prepare_report.json` equals the uninterrupted one's (but for times and paths);
- `prepare --verify` reads every record;
- no process printed a traceback, and none outlived its start (a worker of a SIGKILLed command
  ends when its pipe closes);
- a SIGTERM or SIGINT ended the command with status 0 and the line `Stopped ... on request`.
Exit status 1 when a check fails (the report says which).
"""
import argparse
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

from tools import chaos

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATASET = 'ssv2'
KINDS = ('SIGKILL to the command', 'SIGKILL to the group', 'SIGTERM to the group',
         'SIGINT to the group')
VARYING = ('seconds', 'path', 'workers')  # report keys that differ between two preparations


def examples(data_dir, dataset: str = DATASET) -> dict[str, list[tuple]]:
  """Per split, every record's (id, label, frames) in the order the dataset holds them."""
  import tensorflow_datasets as tfds

  from input_pipeline import builders, records
  builder = tfds.builder(builders.BUILDERS[dataset].name, data_dir=str(data_dir))
  return {split: [(r['id'], r['label'], tuple(r['frames']))
                  for r in records.Records(info.file_instructions)]
          for split, info in builder.info.splits.items()}


def report_of(data_dir, dataset: str = DATASET) -> dict:
  """The preparation's report without what differs between two preparations."""
  from input_pipeline import builders, prepare
  cls = builders.BUILDERS[dataset]
  folder = pathlib.Path(data_dir) / cls.name / str(cls.VERSION)
  report = json.loads((folder / prepare.REPORT).read_text())
  return {k: v for k, v in report.items() if k not in VARYING}


def damaged_download(out: pathlib.Path, videos: int, seed: int) -> pathlib.Path:
  """A synthetic download with three unreadable videos and one of an unknown class."""
  from input_pipeline import synthetic
  src = out / 'download'
  if not (src / 'something-something-v2-train.json').exists():
    synthetic.generate(src, videos, max(4, videos // 8), test=0, size=96, seed=seed, workers=2)
    train_file = src / 'something-something-v2-train.json'
    train = json.loads(train_file.read_text())
    folder = src / '20bn-something-something-v2'
    truncated, garbage, missing = (train[i]['id'] for i in (1, len(train) // 2, -1))
    data = (folder / f'{truncated}.webm').read_bytes()
    (folder / f'{truncated}.webm').write_bytes(data[:len(data) // 2])
    (folder / f'{garbage}.webm').write_bytes(b'\x1aE\xdf\xa3 not really a webm' * 20)
    (folder / f'{missing}.webm').unlink()
    train.insert(3, {'id': '999999', 'template': 'Juggling [something]', 'label': 'juggling',
                     'placeholders': []})
    train_file.write_text(json.dumps(train))
  return src


def command(src: pathlib.Path, data_dir: pathlib.Path, args) -> list[str]:
  return [sys.executable, '-m', 'input_pipeline.prepare', f'--dataset={DATASET}',
          f'--manual_dir={src}', f'--data_dir={data_dir}', f'--workers={args.workers}',
          f'--save_every_s={args.save_every_s}']


def start(argv: list[str], log: pathlib.Path) -> subprocess.Popen:
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log.open('w'),
                          stderr=subprocess.STDOUT, process_group=0)


def group_left(pgid: int, bound_s: float) -> list[str]:
  """The processes still in group `pgid` after up to `bound_s` seconds."""
  deadline = time.monotonic() + bound_s
  while True:
    left = subprocess.run(['pgrep', '-a', '-g', str(pgid)], capture_output=True,
                          text=True).stdout.splitlines()
    if not left or time.monotonic() > deadline:
      return left
    time.sleep(0.1)


def run_through(argv, out: pathlib.Path, rng: random.Random, args, duration_s: float) -> dict:
  """Starts the preparation again and again until it ends, stopping it `args.kills` times, each
  at a moment over what is left of the uninterrupted run's duration (at least its start-up)."""
  stops, failures, resumed, attempt = [], [], 0, 0
  while True:
    log = out / f'chaos.{attempt}.log'
    process = start(argv, log)
    attempt += 1
    kind = rng.choice(KINDS) if len(stops) < args.kills else None
    left = max(1 / 3, 1 - _prepared_fraction(out / 'chaos'))
    moment = rng.uniform(1.0, max(1.0, 0.7 * duration_s * left))  # a start is often faster
    begun = time.monotonic()
    while kind and process.poll() is None and time.monotonic() - begun < moment:
      time.sleep(0.02)
    landed = kind is not None and process.poll() is None
    if landed:
      if kind == 'SIGKILL to the command':
        process.send_signal(signal.SIGKILL)
      else:
        os.killpg(process.pid, getattr(signal, kind.split()[0]))
    try:
      code = process.wait(timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      code = process.wait()
      failures.append(f'start {attempt}: did not end within {args.timeout_s} s')
    text = log.read_text(errors='replace')
    resumed += 'resuming from' in text
    last = (text.strip().splitlines() or [''])[-1]
    finished = code == 0 and 'videos written,' in text
    if 'Traceback' in text or 'Exception ignored' in text:
      failures.append(f'{log.name}: a traceback')
    outlived = group_left(process.pid, args.bound_s)
    if outlived:
      failures.append(f'{log.name}: processes outlived the command: {outlived}')
      os.killpg(process.pid, signal.SIGKILL)
    if landed:
      stops.append({'kind': kind, 'at_s': round(moment, 2), 'exit': code,
                    'finished_first': finished})
      asked = kind.split()[0] in ('SIGTERM', 'SIGINT')
      if asked and not finished and not (
          code == 0 and last.startswith('Stopped ') and 'on request' in last):
        failures.append(f'{kind} at {moment:.2f} s: status {code} and the line {last!r}')
    if not landed:
      if not finished:
        failures.append(f'the last start ended with status {code}: {last!r}')
      return {'stops': stops, 'starts': attempt, 'resumed_starts': resumed,
              'failures': failures}


def _prepared_fraction(data_dir: pathlib.Path) -> float:
  """How much of the training split the work folder holds (0 before any, 1 once done)."""
  counted = [json.loads(p.read_text()) for p in data_dir.glob('*/*.unfinished/train/*.json')]
  work = list(data_dir.glob('*/*.unfinished/work.json'))
  if not work:
    return 1.0 if list(data_dir.glob('*/*/dataset_info.json')) else 0.0
  done = sum(c['videos'] + len(c['skipped']) for c in counted)
  return min(1.0, done / max(1, _train_videos(work[0])))


def _train_videos(work_file: pathlib.Path) -> int:
  return json.loads(work_file.read_text())['splits']['train']['videos']


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kills', type=int, default=5)
  parser.add_argument('--videos', type=int, default=600, help='training videos')
  parser.add_argument('--workers', type=int, default=2)
  parser.add_argument('--save_every_s', type=float, default=0.5)
  parser.add_argument('--seed', type=int, default=None, help='default: a random one, reported')
  parser.add_argument('--out', default='runs/chaos_prepare')
  parser.add_argument('--timeout_s', type=float, default=300.0)
  parser.add_argument('--bound_s', type=float, default=15.0,
                      help='how long workers may take to end after their command')
  args = parser.parse_args(argv)
  out = chaos.begin(args)
  src = damaged_download(out, args.videos, seed=1)
  rng = random.Random(args.seed)
  begun = time.monotonic()
  process = start(command(src, out / 'straight', args), out / 'straight.log')
  failures = [] if process.wait(timeout=args.timeout_s) == 0 else ['the uninterrupted run failed']
  duration_s = time.monotonic() - begun
  stopped = run_through(command(src, out / 'chaos', args), out, rng, args, duration_s)
  failures += stopped['failures']
  if not failures:
    if examples(out / 'chaos') != examples(out / 'straight'):
      failures.append('the examples differ from the uninterrupted preparation\'s')
    if report_of(out / 'chaos') != report_of(out / 'straight'):
      failures.append('prepare_report.json differs from the uninterrupted preparation\'s')
    verify = subprocess.run([sys.executable, '-m', 'input_pipeline.prepare', '--verify',
                             f'--dataset={DATASET}', f'--data_dir={out / "chaos"}'], cwd=ROOT,
                            capture_output=True, text=True)
    if verify.returncode != 0:
      failures.append(f'prepare --verify: {verify.stdout.strip()[-300:]}')
  report = {'seed': args.seed, 'videos': args.videos, 'window_s': round(duration_s, 1),
            'starts': stopped['starts'], 'resumed_starts': stopped['resumed_starts'],
            'stops': stopped['stops'], 'wall_s': round(time.monotonic() - begun, 1),
            'failures': failures,
            'command': 'python -m tools.chaos_prepare ' + ' '.join(
                sys.argv[1:] if argv is None else argv)}
  (out / 'report.json').write_text(json.dumps(report, indent=1))
  print(json.dumps(report, indent=1))
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
