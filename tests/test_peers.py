"""A dead or failed peer stops a multi-process job in bounded time, with one line naming it:
the watch on a stand-in key-value store, and two real main.py processes, one SIGKILLed; and
while the job forms, the join watch on a stand-in coordinator and real main.py processes."""
import json
import signal
import subprocess
import sys
import time

import pytest

from cstm_foundation import stopping
from cstm_jax.distributed import launch, liveness
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


class Coordinator:
  """Whether process 0's service accepts connections, as `launch.accepts_connections` sees it."""

  def __init__(self, up=False):
    self.up = up

  def __call__(self, address):
    assert address == '10.0.0.1:1234'
    return self.up


def join_watch(clock, coordinator, process_id=1, **kwargs):
  return launch.JoinWatch(process_id=process_id, num_processes=3,
                          coordinator_address='10.0.0.1:1234', timeout_s=300.0,
                          peer_timeout_s=10.0, accepts=coordinator, clock=clock, **kwargs)


def test_a_job_that_does_not_form_is_named_after_the_initialization_timeout():
  clock, coordinator = Clock(), Coordinator()
  one, zero = join_watch(clock, coordinator), join_watch(clock, coordinator, process_id=0)
  clock.now += 299
  assert one.check() is None and zero.check() is None
  clock.now += 1
  status, line = one.check()
  assert status == liveness.EXIT_PEER_LOST
  assert line == ("error: process 1 of 3 waited 300 s for the job's coordinator (process 0) at "
                  '10.0.0.1:1234, which never accepted a connection: not started, killed, or the '
                  'address is wrong or blocked (--initialization_timeout_s=300); start every '
                  'process again with the same command')
  status, line = zero.check()  # process 0 holds the coordinator: a peer is missing
  assert status == liveness.EXIT_PEER_LOST and line.startswith(
      'error: process 0 of 3 waited 300 s for the other processes to join the job at '
      '10.0.0.1:1234: one of them did not start')


def test_a_coordinator_killed_while_the_job_forms_is_named_after_the_peer_timeout():
  clock, coordinator = Clock(), Coordinator(up=True)
  one = join_watch(clock, coordinator)
  assert one.check() is None
  coordinator.up = False  # it had accepted connections: now it is gone, not late
  clock.now += 1
  assert one.check() is None
  clock.now += 9
  assert one.check() is None
  clock.now += 1
  status, line = one.check()
  assert status == liveness.EXIT_PEER_LOST and line.startswith(
      "error: the job's coordinator (process 0) at 10.0.0.1:1234 stopped accepting connections "
      '10 s ago, before the job formed') and '--peer_timeout_s=10' in line
  coordinator.up = True  # back (restarted): the wait goes on
  assert one.check() is None


def test_a_stop_request_while_the_job_forms_ends_the_wait_after_a_grace():
  clock = Clock()
  one = join_watch(clock, Coordinator(up=True))
  try:
    stopping.request(signal.SIGTERM)
    assert one.check() is None  # the job may still form, then it stops as one
    clock.now += launch.STOP_GRACE_S
    status, line = one.check()
  finally:
    stopping.reset()
  assert status == 0 and line == (
      'Stopped before the job formed (process 1 of 3 waited 10 s for the others; nothing had '
      'run) on request (SIGTERM); the same command resumes.')


def test_a_job_that_formed_is_not_ended_by_its_join_watch():
  exits = []
  watch = join_watch(time.monotonic, Coordinator(), exit_fn=exits.append, poll_s=0.01)
  watch.timeout_s = 0.05
  watch.formed()
  watch.start()
  time.sleep(0.2)
  assert exits == []
  late = join_watch(time.monotonic, Coordinator(), exit_fn=exits.append, poll_s=0.01)
  late.timeout_s = 0.05
  late.start()
  time.sleep(0.5)
  assert exits == [liveness.EXIT_PEER_LOST]


def test_a_coordinator_sigkilled_before_the_job_formed_stops_its_peer_in_bounded_time(tmp_path):
  # Three processes, the third never started: processes 0 and 1 wait for it in
  # jax.distributed.initialize, where JAX alone would wait 300 s and then abort.
  port, timeout_s = free_port(), 3
  job = [sys.executable, 'main.py', '--config=configs/ssv2_r2plus1d_18.py:smoke',
         f'--workdir={tmp_path / "run"}', f'--coordinator_address=127.0.0.1:{port}',
         '--num_processes=3', f'--peer_timeout_s={timeout_s}', '--initialization_timeout_s=120']
  procs = [subprocess.Popen(job + [f'--process_id={i}'], cwd=ROOT, env=process_env(1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  deadline = time.monotonic() + 120
  while not launch.accepts_connections(f'127.0.0.1:{port}') and time.monotonic() < deadline:
    time.sleep(0.1)
  time.sleep(1)  # process 1's watch sees it up
  procs[0].send_signal(signal.SIGKILL)
  killed_at = time.monotonic()
  _, err = procs[1].communicate(timeout=60)
  stopped_after = time.monotonic() - killed_at
  print(f'process 1 stopped {stopped_after:.1f} s after the coordinator was killed')
  procs[0].wait()
  assert procs[1].returncode == liveness.EXIT_PEER_LOST, err[-3000:]
  assert stopped_after < timeout_s + 3, stopped_after
  assert err.splitlines() == [
      f"error: the job's coordinator (process 0) at 127.0.0.1:{port} stopped accepting "
      f'connections {timeout_s} s ago, before the job formed: killed, preempted or its host '
      f'lost; stopping process 1 of 3 too (--peer_timeout_s={timeout_s}). Find the cause in that '
      "process's log, then start every process again with the same command"], err[-3000:]
