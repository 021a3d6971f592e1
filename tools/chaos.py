"""Chaos: a smoke training run stopped at random moments, started again after each stop, must end
exactly where an uninterrupted run ends.

  python -m tools.chaos [--kills 3] [--processes 1|2] [--steps 16] [--seed S] [--out DIR]
      [--data_dir DIR]

It trains `configs/ssv2_r2plus1d_18.py:smoke` (two loader workers, a checkpoint every
`--checkpoint_every_steps`, evaluations during training) once without interruption, then again
with `--kills` stops, each at a random moment of a start (uniform over `--window_s`, or over the
part of the uninterrupted run's duration still to run) and of a random kind:
SIGKILL to one process, SIGTERM to the job's whole process group (a preempted VM, `scancel`), or
SIGINT to it (Ctrl-C). After each stop the same command starts again, until the run ends. It
then checks, and prints in a JSON report:
- the final parameters are bit-identical to the uninterrupted run's;
- metrics.jsonl has no torn line and no metric logged twice at a step, and its losses and
  evaluations equal the uninterrupted run's at the same steps;
- no process printed a traceback;
- a SIGTERM or SIGINT ended every process with status 0 and the line `Stopped ... on request`;
- with `--processes 2`, every stop (a SIGKILL of one process included) ended the whole job within
  `--bound_s` seconds.
Exit status 1 when a check fails (the report says which). `--data_dir`: a prepared
something_something_v2 to train on (default: a synthetic one made under `--out`); `--straight`:
an uninterrupted run of the same settings made elsewhere (the test suite's, in its process).
"""
import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = 'configs/ssv2_r2plus1d_18.py:smoke'
KINDS = ('SIGKILL to a process', 'SIGTERM to the group', 'SIGINT to the group')


def final_params(workdir):
  """(step, parameters as NumPy arrays) of a run's latest checkpoint, whatever devices and
  processes saved it."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  folder = pathlib.Path(workdir).absolute() / 'checkpoints'
  step = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(folder / str(step) / 'state').item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  state = checkpointer.restore(folder / str(step) / 'state', abstract)
  return step, [np.asarray(x) for x in jax.tree_util.tree_leaves(state['params'])]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Job:
  """The run's processes, started in one new process group (the first is its leader)."""

  def __init__(self, args, workdir: pathlib.Path, attempt: int):
    self.logs = [workdir.parent / f'{workdir.name}.{attempt}.{i}.log'
                 for i in range(args.processes)]
    command = [sys.executable, 'main.py', f'--config={CONFIG}', f'--workdir={workdir}',
               f'--config.data.data_dir={args.data_dir}', '--config.data.num_workers=2',
               f'--config.train.max_steps={args.steps}',
               f'--config.train.checkpoint_every_steps={args.checkpoint_every_steps}',
               f'--config.train.eval_every_epochs={args.eval_every_epochs}']
    if args.processes > 1:
      port = free_port()
      command += [f'--coordinator_address=127.0.0.1:{port}',
                  f'--num_processes={args.processes}', f'--peer_timeout_s={args.peer_timeout_s}',
                  f'--initialization_timeout_s={args.initialization_timeout_s}']
    flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count')]
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'XLA_FLAGS': ' '.join(
        flags + [f'--xla_force_host_platform_device_count={args.devices}'])}
    self.processes = []
    for i, log in enumerate(self.logs):
      extra = [f'--process_id={i}'] if args.processes > 1 else []
      group = self.processes[0].pid if i else 0  # 0: a new group, this one its leader
      self.processes.append(subprocess.Popen(command + extra, cwd=ROOT, env=env,
                                             stdout=subprocess.DEVNULL, stderr=log.open('w'),
                                             process_group=group))
    self.started = time.monotonic()

  def running(self) -> bool:
    return any(p.poll() is None for p in self.processes)

  def wait(self, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    while self.running() and time.monotonic() < deadline:
      time.sleep(0.05)
    if self.running():
      os.killpg(self.processes[0].pid, signal.SIGKILL)
      for p in self.processes:
        p.wait()
      return [None] * len(self.processes)
    return [p.returncode for p in self.processes]

  def kill_group(self) -> None:
    try:
      os.killpg(self.processes[0].pid, signal.SIGKILL)
    except ProcessLookupError:
      pass

  def stderr(self) -> list[str]:
    return [log.read_text(errors='replace') for log in self.logs]


def run_through(args, workdir: pathlib.Path, rng: random.Random, kills: int,
                duration_s: float) -> dict:
  """Starts the run in `workdir` again and again until it ends, stopping it `kills` times."""
  stops, attempt, failures = [], 0, []
  while True:
    job = Job(args, workdir, attempt)
    attempt += 1
    if len(stops) >= kills:
      codes = job.wait(args.timeout_s)
      failures += _check_logs(job)
      if codes != [0] * args.processes:
        failures.append(f'the last start ended with {codes}')
      return {'stops': stops, 'starts': attempt, 'failures': failures}
    # Over what is left of the run when the window is the uninterrupted run's duration, so that
    # late starts are stopped too (at least a third of it: a start's own start-up).
    left = 1.0 if args.window_s else max(1 / 3, 1 - _done_steps(workdir) / args.steps)
    moment = rng.uniform(0.5, duration_s * left)
    kind = rng.choice(KINDS)
    while job.running() and time.monotonic() - job.started < moment:
      time.sleep(0.02)
    if not job.running():  # it ended before the moment came: the run is complete
      failures += _check_logs(job)
      return {'stops': stops, 'starts': attempt, 'failures': failures}
    victim = rng.randrange(args.processes)
    sent = time.monotonic()
    if kind.startswith('SIGKILL'):
      job.processes[victim].send_signal(signal.SIGKILL)
    else:
      os.killpg(job.processes[0].pid, getattr(signal, kind.split()[0]))
    codes = job.wait(args.timeout_s)
    took = time.monotonic() - sent
    record = {'kind': kind, 'at_s': round(moment, 2), 'stopped_in_s': round(took, 2),
              'exit': codes}
    if kind.startswith('SIGKILL'):
      record['process'] = victim
    stops.append(record)
    failures += _check_stop(job, record, args)
    job.kill_group()  # leftovers of a SIGKILLed main process (its loader workers)


def _done_steps(workdir: pathlib.Path) -> int:
  """The step of the run's newest checkpoint (0: none yet)."""
  folder = workdir / 'checkpoints'
  return max([int(p.name) for p in folder.glob('*') if p.name.isdigit()], default=0)


def _check_logs(job) -> list[str]:
  return [f'{log.name}: a traceback' for log, err in zip(job.logs, job.stderr())
          if 'Traceback' in err]


def _check_stop(job, record, args) -> list[str]:
  failures = _check_logs(job)
  codes, kind = record['exit'], record['kind']
  if None in codes:
    failures.append(f'{kind} at {record["at_s"]} s: the job did not end within '
                    f'{args.timeout_s} s')
  elif args.processes > 1 and record['stopped_in_s'] > args.bound_s:
    failures.append(f'{kind} at {record["at_s"]} s: the job took {record["stopped_in_s"]} s to '
                    f'stop (bound {args.bound_s} s)')
  if not kind.startswith('SIGKILL'):
    for log, code, err in zip(job.logs, codes, job.stderr()):
      last = (err.strip().splitlines() or [''])[-1]
      if code != 0 or not (last.startswith('Stopped ') and 'on request' in last):
        failures.append(f'{kind} at {record["at_s"]} s: {log.name} ended with status {code} '
                        f'and the line {last!r}')
  return failures


def _records(workdir: pathlib.Path) -> tuple[list[dict], list[str]]:
  """metrics.jsonl's records, and what is wrong with it (a torn line, a metric logged twice)."""
  records, problems, seen = [], [], set()
  for number, line in enumerate((workdir / 'metrics.jsonl').read_text().splitlines(), 1):
    try:
      record = json.loads(line)
    except ValueError:
      problems.append(f'metrics.jsonl line {number} is torn: {line[:80]!r}')
      continue
    for key in record:
      if key != 'step' and (record['step'], key) in seen:
        problems.append(f'metrics.jsonl: {key} logged twice at step {record["step"]}')
      seen.add((record['step'], key))
    records.append(record)
  return records, problems


def compare(straight: pathlib.Path, chaos: pathlib.Path) -> list[str]:
  """What differs between the uninterrupted run and the stopped one."""
  import numpy as np
  failures = []
  (step_a, params_a), (step_b, params_b) = final_params(straight), final_params(chaos)
  if step_a != step_b:
    failures.append(f'the runs ended at steps {step_a} and {step_b}')
  elif any(not np.array_equal(a, b) for a, b in zip(params_a, params_b)):
    failures.append('the final parameters differ from the uninterrupted run\'s')
  expected, _ = _records(straight)
  got, problems = _records(chaos)
  failures += problems
  deterministic = ('loss', 'accuracy', 'grad_norm', 'lr', 'val_top1', 'val_top5',
                   'val_mean_class_accuracy')
  values = lambda records: {(r['step'], k): r[k] for r in records for k in deterministic if k in r}
  mine, theirs = values(got), values(expected)
  for key in sorted(set(mine) & set(theirs)):
    if mine[key] != theirs[key]:
      failures.append(f'metrics.jsonl: {key[1]} at step {key[0]} is {mine[key]}, '
                      f'uninterrupted {theirs[key]}')
  evaluations = lambda records: sorted(r['step'] for r in records if 'val_top1' in r)
  if evaluations(got) != evaluations(expected):
    failures.append(f'evaluations at steps {evaluations(got)}, uninterrupted at '
                    f'{evaluations(expected)}')
  return failures


def _prepared_data(out: pathlib.Path) -> pathlib.Path:
  data = out / 'data'
  if not (data / 'something_something_v2').exists():
    from input_pipeline import prepare, synthetic
    synthetic.generate(out / 'download', 24, 8, test=0, size=32, workers=1)
    prepare.prepare('ssv2', out / 'download', data, workers=1, short_side=48)
  return data


def begin(args) -> pathlib.Path:
  """Draws `args.seed` unless given; returns `args.out`, emptied of an earlier soak's runs."""
  args.seed = random.randrange(2**31) if args.seed is None else args.seed
  out = pathlib.Path(args.out).expanduser().absolute()
  out.mkdir(parents=True, exist_ok=True)
  for old in [*out.glob('straight*'), *out.glob('chaos*')]:
    shutil.rmtree(old) if old.is_dir() else old.unlink()
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--kills', type=int, default=3)
  parser.add_argument('--processes', type=int, default=1, choices=(1, 2))
  parser.add_argument('--steps', type=int, default=16)
  parser.add_argument('--eval_every_epochs', type=float, default=2.0)
  parser.add_argument('--checkpoint_every_steps', type=int, default=3)
  parser.add_argument('--seed', type=int, default=None, help='default: a random one, reported')
  parser.add_argument('--out', default='runs/chaos')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--peer_timeout_s', type=float, default=5.0)
  parser.add_argument('--initialization_timeout_s', type=float, default=30.0,
                      help='with 2 processes: how long each waits for the other to join')
  parser.add_argument('--bound_s', type=float, default=60.0,
                      help='with 2 processes: the longest a stop may take to end the job')
  parser.add_argument('--timeout_s', type=float, default=300.0)
  parser.add_argument('--devices', type=int, default=1, help='CPU devices a process')
  parser.add_argument('--straight', default=None,
                      help='an uninterrupted run of the same settings to compare with (default: '
                      'one made first, whose duration spans the stops)')
  parser.add_argument('--window_s', type=float, default=0.0,
                      help='stops land uniformly in [0.5, window_s] s after a start (default: '
                      "the uninterrupted run's duration)")
  args = parser.parse_args(argv)
  out = begin(args)
  args.data_dir = str(pathlib.Path(args.data_dir).expanduser().absolute() if args.data_dir
                      else _prepared_data(out))
  rng = random.Random(args.seed)
  start = time.monotonic()
  if args.straight:
    straight, failures = pathlib.Path(args.straight).expanduser().absolute(), []
    duration_s = args.window_s
  else:
    straight = out / 'straight'
    failures = run_through(args, straight, rng, 0, 0.0)['failures']
    duration_s = args.window_s or time.monotonic() - start
  chaos = run_through(args, out / 'chaos', rng, args.kills, duration_s)
  failures += chaos['failures']
  if not failures:
    failures = compare(straight, out / 'chaos')
  report = {'seed': args.seed, 'processes': args.processes, 'steps': args.steps,
            'window_s': round(duration_s, 1), 'starts': chaos['starts'],
            'stops': chaos['stops'],
            'longest_stop_s': max([s['stopped_in_s'] for s in chaos['stops']], default=0.0),
            'wall_s': round(time.monotonic() - start, 1), 'failures': failures,
            'command': 'python -m tools.chaos ' + ' '.join(sys.argv[1:] if argv is None else argv)}
  (out / 'report.json').write_text(json.dumps(report, indent=1))
  print(json.dumps(report, indent=1))
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
