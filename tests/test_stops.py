"""Stop requests and worker processes: a signal anywhere ends a command in one line; a worker that
dies alone is named; pools that cannot start fail at once. (Training stopped anywhere and resumed:
tests/test_train.py, `tools/chaos.py`.)"""
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from cstm_foundation import stopping
from input_pipeline import pipeline, worker_pools
from test_pipeline import data_config
from runs import ROOT

SYNTHETIC_ARGS = ['--train', '400', '--val', '0', '--test', '0', '--workers', '2']
SYNTHETIC = [sys.executable, '-m', 'input_pipeline.synthetic', *SYNTHETIC_ARGS]

# The synthetic generator with CPython's race on a process pool's wakeup pipe (gh-125451, fixed
# in 3.12.8 and 3.13.1) widened as a loaded machine widens it: the pipe's close waits 0.3 s, and
# the exit hook's wakeup 0.6 s between its check and its write. A pool left to the exit hook
# (`ProcessPoolExecutor.shutdown(wait=False)` at a stop) then prints `OSError: [Errno 9] Bad
# file descriptor` after the stop's line, every time; a pool ended and joined cannot meet it.
WIDENED_RACE = """import sys, time
sys.path.insert(0, {root!r})
import concurrent.futures.process as executor_module
_close = executor_module._ThreadWakeup.close
def close(self):
  time.sleep(0.3)
  _close(self)
def wakeup(self):
  if not self._closed:
    if executor_module._global_shutdown:
      time.sleep(0.6)
    self._writer.send_bytes(b'')
executor_module._ThreadWakeup.close = close
executor_module._ThreadWakeup.wakeup = wakeup
from input_pipeline import synthetic
if __name__ == '__main__':
  sys.exit(synthetic.cli())
"""


def run_and_signal(command, signals, *, after_s, between_s=0.3):
  """Runs `command` in its own process group, sends each of `signals` to the whole group (the
  first `after_s` seconds in); returns (exit status, stderr, worker processes left)."""
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, process_group=0)
  time.sleep(after_s)
  for sig in signals:
    os.killpg(process.pid, sig)
    time.sleep(between_s)
  _, err = process.communicate(timeout=120)
  deadline = time.monotonic() + 10  # multiprocessing's resource tracker ends once it sees EOF
  while (left := _group(process.pid)) and time.monotonic() < deadline:
    time.sleep(0.1)
  return process.returncode, err, left


def _group(pgid: int) -> list[str]:
  """The command lines of the processes in group `pgid`."""
  found = subprocess.run(['pgrep', '-a', '-g', str(pgid)], capture_output=True, text=True)
  return found.stdout.splitlines()


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_stop_of_the_whole_group_ends_a_pool_in_one_line(tmp_path, sig):
  # As a preempted VM (SIGTERM to every process) or Ctrl-C (SIGINT to the foreground group)
  # reach the synthetic generator and its two workers.
  script = tmp_path / 'synthetic_widened.py'
  script.write_text(WIDENED_RACE.format(root=str(ROOT)))
  out = tmp_path / 'videos'
  code, err, left = run_and_signal([sys.executable, str(script), *SYNTHETIC_ARGS, '--out',
                                    str(out)], [sig], after_s=4)
  last = err.strip().splitlines()[-1]
  assert code == 0 and 'Traceback' not in err and 'Exception ignored' not in err, err[-3000:]
  assert last.startswith(f'Stopped writing synthetic videos to {out} after ') and \
      last.endswith(f' of 400 on request ({sig.name}); the same command resumes.'), last
  assert left == []  # no worker outlives it
  done = int(last.split(' after ')[1].split()[0])
  assert 0 < done < 400 and len(list((out / '20bn-something-something-v2').glob('*.webm'))) >= done
  # The same command writes only the rest.
  result = subprocess.run(SYNTHETIC + ['--out', str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'synthetic: resuming in {out}: ' in result.stderr
  assert len(json.loads((out / 'something-something-v2-train.json').read_text())) == 400


def test_a_second_ctrl_c_stops_at_once():
  # A command busy between its safe points (a long compile, a slow checkpoint write) and two
  # Ctrl-C a moment apart.
  code, err, left = run_and_signal([sys.executable, '-c', (
      'from cstm_foundation.commands import run_main\nimport time\n'
      'run_main(lambda: time.sleep(60), at_safe_points=True)')],
      [signal.SIGINT, signal.SIGINT], after_s=2)
  lines = err.strip().splitlines()
  assert code == 130 and 'Traceback' not in err and len(lines) == 2, err
  assert lines[0].endswith('SIGINT: stopping at the next safe point (Ctrl-C again stops at once)')
  assert lines[1] == ('Stopped at once on a second stop signal (SIGINT); nothing more was saved: '
                      'the same command resumes from the last checkpoint.')
  assert left == []


def test_a_command_without_safe_points_stops_at_the_first_signal():
  # A benchmark or an export has no state to save: the first Ctrl-C ends it, in one line.
  code, err, _ = run_and_signal([sys.executable, '-c', (
      'from cstm_foundation.commands import run_main\nimport time\n'
      'run_main(lambda: time.sleep(60))')], [signal.SIGINT], after_s=2)
  assert code == 130 and 'Traceback' not in err, err
  assert err.strip() == 'Stopped on request (SIGINT); the command did not finish: run it again.'


UNGUARDED = """import sys
sys.path.insert(0, {root!r})
from input_pipeline import prepare
prepare.prepare('ssv2', {src!r}, {out!r}, workers=2)
"""


def test_workers_that_cannot_start_fail_at_once_in_one_line(synthetic_ssv2, tmp_path):
  # A script without `if __name__ == '__main__':`: each spawned worker would run it again.
  script = tmp_path / 'unguarded.py'
  script.write_text(UNGUARDED.format(root=str(ROOT), src=str(synthetic_ssv2[0]),
                                     out=str(tmp_path / 'data')))
  start = time.monotonic()
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
  last = result.stderr.strip().splitlines()[-1]
  assert result.returncode == 1 and time.monotonic() - start < 60, result.stderr[-3000:]
  assert last.startswith('input_pipeline.worker_pools.WorkersCannotStart: the worker processes '
                         'of preparing something_something_v2 train (videos) died before doing '
                         "any work: a script that calls it must put its top level under `if "
                         "__name__ == '__main__':`") and 'workers=1' in last, last
  assert result.stderr.count('Traceback') == 1  # the caller's, not one per worker
  # The same script read from standard input: refused before anything starts.
  from_stdin = UNGUARDED.format(root=str(ROOT), src=str(synthetic_ssv2[0]),
                                out=str(tmp_path / 'data_stdin'))
  result = subprocess.run([sys.executable, '-'], input=from_stdin, capture_output=True,
                          text=True, timeout=120)
  last = result.stderr.strip().splitlines()[-1]
  assert result.returncode == 1 and result.stderr.count('Traceback') == 1, result.stderr[-3000:]
  assert last == ('input_pipeline.worker_pools.WorkersCannotStart: prepare: worker processes '
                  'cannot start from a script read from standard input (<stdin>): save it to a '
                  "file with an `if __name__ == '__main__':` guard, or set workers=1 "
                  '(--workers 1)')
  assert not (tmp_path / 'data_stdin').exists()


@pytest.fixture
def loader(prepared_ssv2):
  """A training loader with two worker processes, one batch taken."""
  config = data_config(data_dir=str(prepared_ssv2[0]), num_frames=4, crop=32, test_scale=48,
                       batch_size=4, num_workers=2, prefetch=1)
  iterator = iter(pipeline.train_dataset(config))
  batches = worker_pools.loaded(iterator)
  next(batches)
  workers = [p for p in multiprocessing.active_children() if p.name.startswith('grain-')]
  assert len(workers) == 2
  yield batches, workers
  iterator.close()
  stopping.reset()


def _next_until_error(batches, limit=200):
  for _ in range(limit):
    next(batches)
  raise AssertionError('the loader kept going with a dead worker')


def test_a_loader_worker_that_dies_alone_is_named_with_its_likely_cause(loader):
  batches, workers = loader
  os.kill(workers[1].pid, signal.SIGKILL)  # as the out-of-memory killer does
  with pytest.raises(worker_pools.WorkerDied) as error:
    _next_until_error(batches)
  assert str(error.value) == (
      f'loader worker process {workers[1].pid} died with exit code -9 (killed by SIGKILL: most '
      'often the out-of-memory killer (`dmesg` names it); give the host more memory or lower '
      'data.num_workers or data.prefetch); the same command resumes from the last checkpoint')


def test_a_loader_worker_killed_with_the_command_is_its_stop_not_a_crash(loader):
  batches, workers = loader
  stopping.request(signal.SIGTERM)  # the command's share of a SIGTERM to the group
  os.kill(workers[0].pid, signal.SIGTERM)
  with pytest.raises(stopping.Stopped) as stop:
    _next_until_error(batches)
  assert str(stop.value) == ('Stopped while loading data on request (SIGTERM); the same command '
                             'resumes.') and not stop.value.lost


class Classifier:
  """A stand-in `predict.Predictor`: the class of a video is its name's length; it asks the
  command to stop (as a SIGTERM would) while it predicts its `stop_after`-th video."""

  def __init__(self, stop_after=None):
    self.seen, self.stop_after = [], stop_after

  def probabilities(self, video):
    from input_pipeline import video_io
    if len(self.seen) + 1 == self.stop_after:
      stopping.request(signal.SIGTERM)
    self.seen.append(video.name)
    if video.name.startswith('broken'):
      raise video_io.VideoError('not a video')
    return len(video.name)

  def top(self, probabilities, k):
    return [(f'class_{probabilities}', 1.0)][:k]


def test_predict_over_a_folder_stopped_resumes_from_its_rows(tmp_path, capsys):
  from cstm_jax.inference import predict
  videos = [tmp_path / name for name in ('a.webm', 'bb.webm', 'broken.webm', 'ccc.webm')]
  out = tmp_path / 'predictions.csv'
  settings = {'folder': str(tmp_path), 'views': '1x1', 'weights': '0123'}
  straight = predict.predict_folder(Classifier(), videos, 1, out, settings=settings)
  expected = out.read_text()

  out.unlink()
  stopped = Classifier(stop_after=3)
  try:
    with pytest.raises(stopping.Stopped) as stop:
      predict.predict_folder(stopped, videos, 1, out, settings=settings)
  finally:
    stopping.reset()
  unfinished = tmp_path / 'predictions.csv.unfinished'
  assert str(stop.value) == (f'Stopped predicting after 3 of 4 videos ({unfinished} holds their '
                             'rows) on request (SIGTERM); the same command resumes.')
  assert stop.value.exit_status == 0 and not out.exists()

  # Other weights: every video again. The same: only the rest, and the same CSV as straight.
  other = Classifier()
  with pytest.raises(stopping.Stopped):
    stopping.request(signal.SIGTERM)
    try:
      predict.predict_folder(other, videos, 1, out, settings={**settings, 'weights': '4567'})
    finally:
      stopping.reset()
  assert 'left by a stopped prediction with other weights; predicting every video again' in \
      capsys.readouterr().err
  stopped = Classifier(stop_after=3)
  try:
    with pytest.raises(stopping.Stopped):
      predict.predict_folder(stopped, videos, 1, out, settings=settings)
  finally:
    stopping.reset()
  resumed = Classifier()
  assert predict.predict_folder(resumed, videos, 1, out, settings=settings) == straight
  assert resumed.seen == ['ccc.webm']
  assert f'resuming {unfinished}: 3 of 4 videos were predicted' in capsys.readouterr().err
  assert out.read_text() == expected and not unfinished.exists()


def test_prepare_stopped_at_random_moments_ends_with_the_uninterrupted_dataset(tmp_path):
  # `make stress` runs it again and again under load, each time with another seed (its report
  # names it; `python -m tools.chaos_prepare --seed S` replays one).
  from tools import chaos_prepare
  seed = int.from_bytes(os.urandom(4), 'little') % 2**31
  code = chaos_prepare.main(['--kills', '3', '--videos', '300', '--seed', str(seed),
                             '--out', str(tmp_path)])
  report = json.loads((tmp_path / 'report.json').read_text())
  assert code == 0 and report['failures'] == [], (seed, report)
  assert report['stops'], report  # at least one stop landed before the preparation ended


def _sleep_long():
  time.sleep(60)


def test_a_command_ends_the_workers_it_left_before_it_returns():
  # The net under every pool and loader: a worker process a command left running is ended
  # (joined, then killed after the grace) before the command returns, not left to
  # multiprocessing's exit hook.
  from cstm_foundation import commands

  def leaves_a_worker():
    process = multiprocessing.get_context('spawn').Process(target=_sleep_long, daemon=True)
    process.start()
    leaves_a_worker.pid = process.pid
    return 0

  start = time.monotonic()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(commands, 'end_children',
                  lambda keep, end=commands.end_children: end(grace_s=1.0, keep=keep))
    assert commands.run_main(leaves_a_worker) == 0
  assert multiprocessing.active_children() == [] and time.monotonic() - start < 30
  with pytest.raises(ProcessLookupError):
    os.kill(leaves_a_worker.pid, 0)


def _square_or_fail(job):
  if job == 'die':
    os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does
  if job == 'bug':
    raise KeyError('a bug in a worker')
  time.sleep(0.002 * (job % 5))  # out of order
  return job * job


def test_a_pool_gives_results_in_order_and_names_a_dead_worker_and_a_job_s_error():
  jobs = list(range(40))
  assert list(worker_pools.imap(_square_or_fail, jobs, workers=3, what='squares')) == \
      [j * j for j in jobs]
  assert sorted(worker_pools.imap(_square_or_fail, jobs, workers=3, what='squares',
                                  ordered=False)) == [j * j for j in jobs]
  with pytest.raises(worker_pools.WorkerDied) as died:
    list(worker_pools.imap(_square_or_fail, jobs[:10] + ['die'] + jobs, workers=2,
                           what='squares', resumes='the same command resumes'))
  assert re.fullmatch(
      r'worker process \d+ of squares died after 1?\d of 51 with exit code -9 \(killed by '
      r'SIGKILL: most often the out-of-memory killer \(`dmesg` names it\); give the host more '
      r'memory or lower --workers\); the same command resumes', str(died.value)), died.value
  with pytest.raises(KeyError) as bug:
    list(worker_pools.imap(_square_or_fail, jobs[:5] + ['bug'], workers=2, what='squares'))
  assert isinstance(bug.value.__cause__, worker_pools.RemoteTraceback)
  assert 'in _square_or_fail' in str(bug.value.__cause__)
  assert multiprocessing.active_children() == []  # every way out ended its workers
