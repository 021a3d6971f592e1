"""A dead or failed peer stops a multi-process job in bounded time, with one line naming it:
the watch on a stand-in key-value store, and two real main.py processes, one SIGKILLed."""
import json
import signal
import subprocess
import sys
import time

import pytest

from cstm_jax.distributed import liveness
from runs import ROOT, free_port, process_env


class Store:
  """The coordination service's key-value store, as jax's client gives it."""

  def __init__(self):
    self.values, self.down = {}, False

  def key_value_set(self, key, value, allow_overwrite=False):
    if self.down:
      raise RuntimeError('UNAVAILABLE: failed to connect to all addresses')
    self.values[key] = value

  def key_value_dir_get(self, prefix):
    if self.down:
      raise RuntimeError('UNAVAILABLE: failed to connect to all addresses')
    return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


class Clock:
  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def watches(store, clock, n=3, timeout_s=10.0):
  return [liveness.PeerWatch(store, process_id=i, num_processes=n, timeout_s=timeout_s,
                             workdir='/runs/x', clock=clock) for i in range(n)]


def test_a_silent_peer_is_named_after_the_timeout_and_a_finished_one_is_not_waited_for():
  store, clock = Store(), Clock()
  zero, one, two = watches(store, clock)
  for w in (zero, one, two):
    w._publish()
  zero._seen = {1: ({}, clock.now), 2: ({}, clock.now)}
  assert zero.check() is None
  clock.now += 8
  one._publish()  # process 1 beats, process 2 has ended normally
  two._publish(liveness.DONE)
  assert zero.check() is None
  clock.now += 8  # 16 s since process 1's last beat... no: 8 s since it changed
  assert zero.check() is None
  clock.now += 3  # process 1 silent for 11 s > 10 s; process 2 is done, not lost
  why = zero.check()
  assert why.startswith('process 1 of 3 (host ') and 'stopped answering 11 s ago' in why
  report = zero.report(why)
  assert report.startswith('error: process 1 of 3') and '--peer_timeout_s=10' in report
  assert 'resumes from its last checkpoint in /runs/x' in report


def test_a_peer_that_failed_or_stops_ends_the_others_at_once_with_its_reason():
  store, clock = Store(), Clock()
  zero, one, _ = watches(store, clock)
  zero._seen = {1: ({}, clock.now), 2: ({}, clock.now)}
  one._publish(liveness.FAILED, 'data/x: no split validation')
  assert 'process 1 of 3 (host' in zero.check()
  assert zero.check().endswith('stopped with an error (data/x: no split validation)')
  one._publish(liveness.STOPPING, 'process 2 of 3 stopped answering 61 s ago')
  assert zero.check().endswith('stopped because process 2 of 3 stopped answering 61 s ago')


def test_a_peer_that_stopped_on_request_is_followed_after_a_grace():
  # The others stop at the same step a moment later; one left waiting in a collective (its
  # peer stopped where they did not agree) stops too, naming it, instead of waiting for ever.
  store, clock = Store(), Clock()
  zero, one, _ = watches(store, clock, timeout_s=5.0)
  zero._seen = {1: ({}, clock.now), 2: ({}, clock.now)}
  one._publish(liveness.STOPPED)
  clock.now += 1
  two = zero._seen[2][0]
  assert zero.check() is None
  clock.now += liveness.STOPPED_GRACE_S + 1
  zero._seen[2] = (two, clock.now)  # process 2 still beats
  why = zero.check()
  assert why.startswith('process 1 of 3 (host ') and why.endswith(
      f'stopped on request {liveness.STOPPED_GRACE_S + 1:.0f} s ago and this one did not')


def test_a_coordinator_that_stops_answering_is_reported_after_the_timeout():
  store, clock = Store(), Clock()
  _, one, _ = watches(store, clock)
  one._seen = {0: ({}, clock.now), 2: ({}, clock.now)}
  store.down = True
  assert one.check() is None
  clock.now += 11
  assert one.check().startswith("the job's coordinator (process 0) has not answered for 11 s "
                                '(UNAVAILABLE')


def test_the_watch_speaks_before_jax_aborts():
  for timeout in (1, 60, 600):
    assert liveness.jax_heartbeat_timeout_s(timeout) > timeout + liveness.interval_s(timeout)


def _job(workdir, data_dir, port, process, timeout_s):
  return [sys.executable, 'main.py', '--config=configs/ssv2_r2plus1d_18.py:smoke',
          f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
          '--config.train.max_steps=400', '--config.train.eval_every_epochs=1000',
          '--config.train.checkpoint_every_steps=2', '--config.train.log_every_steps=1',
          f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
          f'--process_id={process}', f'--peer_timeout_s={timeout_s}']


@pytest.mark.parametrize('victim', [1, 0])
def test_a_sigkilled_process_stops_the_other_in_bounded_time_naming_it(prepared_ssv2, tmp_path,
                                                                        victim):
  workdir = tmp_path / 'run'
  port, timeout_s = free_port(), 5
  env = process_env(4)
  procs = [subprocess.Popen(_job(workdir, prepared_ssv2[0], port, i, timeout_s), cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  deadline = time.monotonic() + 240
  checkpointed = lambda: any(p.name.isdigit() for p in (workdir / 'checkpoints').glob('*'))
  while not checkpointed() and time.monotonic() < deadline and \
      all(p.poll() is None for p in procs):
    time.sleep(0.05)
  assert checkpointed(), procs[0].communicate()[1][-3000:]
  procs[victim].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  survivor = procs[1 - victim]
  _, err = survivor.communicate(timeout=120)
  stopped_after = time.monotonic() - killed_at
  print(f"victim {victim}: the survivor stopped {stopped_after:.1f} s after the kill")
  procs[victim].wait()
  lines = err.splitlines()
  if victim == 1:
    # Named in one line, exit 75, within the timeout and a few beats (here 5 s + at most 1 s).
    assert survivor.returncode == liveness.EXIT_PEER_LOST, err[-3000:]
    assert stopped_after < timeout_s + 6, stopped_after
    error = [l for l in lines if l.startswith('error: ')]
    assert len(error) == 1 and error[0].startswith(
        f'error: process 1 of 2 (host ') and f'pid {procs[1].pid}' in error[0], err[-3000:]
    assert f'resumes from its last checkpoint in {workdir}' in error[0]
  else:
    # The coordinator's service went with it: JAX stops the survivor at once, with its own line.
    assert survivor.returncode == -signal.SIGABRT, err[-3000:]
    assert stopped_after < timeout_s + 6, stopped_after
    assert 'Terminating process because the JAX distributed service detected fatal errors' in err
  assert 'Traceback' not in err and 'Extension modules' not in err, err[-3000:]


def test_a_failing_process_reports_its_error_once_and_tells_the_others(capsys):
  store, clock, codes = Store(), Clock(), []
  one = liveness.PeerWatch(store, process_id=1, num_processes=2, timeout_s=10.0, clock=clock,
                           exit_fn=codes.append)
  one.failed(liveness.UserError('data/x: no split validation; prepare it again'))
  assert codes == [1]
  assert capsys.readouterr().err == 'error: data/x: no split validation; prepare it again\n'
  record = json.loads(store.values['cstm_peers/1'])
  assert (record['state'], record['why']) == (liveness.FAILED, 'data/x: no split validation; '
                                                            'prepare it again')
