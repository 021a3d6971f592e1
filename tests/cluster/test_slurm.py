"""scripts/slurm_train.sbatch under real SLURM (this machine as a one-node cluster, two tasks of
4 CPU devices each): stopped with SIGTERM, requeued and resumed, equal to one process; a task
SIGKILLed stops the job in bounded time, naming it."""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from configs import ssv2_r2plus1d_18
from cstm_jax.distributed import liveness
from cstm_jax.train import experiment
from runs import ROOT, free_port, process_env, smoke

# The README's sbatch line on a node of this machine's CPUs: two tasks, no GPUs.
NODE = ['--nodes=1', '--ntasks-per-node=2', '--gpus-per-node=0', '--cpus-per-task=1']


def _job_state(env, job: str) -> dict:
  out = subprocess.run(['scontrol', 'show', 'job', '-o', job], env=env, capture_output=True,
                       text=True).stdout
  return dict(re.findall(r'(\w+)=(\S+)', out))


def _wait(predicate, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return
    time.sleep(0.2)
  raise AssertionError(f'timed out waiting for {what}')


def _submit(env, args, out):
  result = subprocess.run(['sbatch', '--parsable', '--open-mode=append', f'--output={out}',
                           *NODE, 'scripts/slurm_train.sbatch', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
  return result.stdout.strip().split(';')[0]


def _ended(env, job):
  return lambda: _job_state(env, job).get('JobState') in ('COMPLETED', 'FAILED', 'CANCELLED',
                                                          'TIMEOUT', 'NODE_FAIL')


def _checkpointed(run):
  return lambda: any(p.name.isdigit() for p in (run / 'checkpoints').glob('*'))


def _task_pid(job: str, task: int) -> int:
  """The pid of `main.py` for SLURM task `task` of `job`, found by its environment."""
  for entry in pathlib.Path('/proc').iterdir():
    if not entry.name.isdigit():
      continue
    try:
      environ = (entry / 'environ').read_bytes().split(b'\0')
      cmdline = (entry / 'cmdline').read_bytes()
    except OSError:
      continue
    if b'main.py' in cmdline and f'SLURM_JOB_ID={job}'.encode() in environ and \
        f'SLURM_PROCID={task}'.encode() in environ:
      return int(entry.name)
  raise AssertionError(f'no task {task} of job {job}')


def test_a_job_stopped_by_sigterm_is_requeued_resumes_and_matches_one_process(
    slurm, prepared_ssv2, tmp_path):
  # Paths as a user writes them in a job script: `~` and a variable the shell did not expand.
  home = tmp_path / 'home'
  home.mkdir()
  (home / 'cstm').symlink_to(ROOT)
  data_dir = pathlib.Path(prepared_ssv2[0])
  overrides = ['--config.train.eval_every_epochs=1000', '--config.train.max_steps=12']
  env = {**process_env(4, HOME=str(home), DATA=str(data_dir.parent), PYTHON=sys.executable,
                       JAX_COORDINATOR_PORT=str(free_port())), 'SLURM_CONF': slurm['SLURM_CONF']}
  out = tmp_path / 'job.out'
  run = home / 'runs' / 'two'
  job = _submit(env, ['~/cstm/configs/ssv2_r2plus1d_18.py:smoke', '~/runs/two',
                      '--config.data.data_dir=$DATA/' + data_dir.name, *overrides], out)

  # SIGTERM to both tasks (a preemption, or --signal=TERM@600 before the time limit): both save
  # the same step and stop, and the job completes.
  _wait(_checkpointed(run), 240, 'the first checkpoint')
  subprocess.run(['scancel', '--signal=TERM', job], env=env, check=True)
  _wait(_ended(env, job), 120, 'the job to stop')
  log = out.read_text()
  assert _job_state(env, job)['JobState'] == 'COMPLETED', log[-3000:]
  stopped = re.findall(r'Stopped at step (\d+) on request', log)
  assert len(stopped) == 2 and stopped[0] == stopped[1], log[-3000:]
  step = int(stopped[0])
  assert step < 12 and (run / 'checkpoints' / str(step)).is_dir()
  assert not (run / 'final_metrics.json').exists()

  # Requeued (what SLURM does after a preemption): the same job resumes from that step. (It
  # becomes eligible once the old credentials expire: cred_expire, 5 s on this cluster.)
  subprocess.run(['scontrol', 'requeue', job], env=env, check=True)
  _wait(lambda: _job_state(env, job).get('Restarts') == '1' and _ended(env, job)(), 240,
        'the requeued job to end')
  log = out.read_text()
  assert _job_state(env, job)['JobState'] == 'COMPLETED', log[-3000:]
  assert f'Resuming from the checkpoint of step {step}' in log
  assert 'Training none/r2plus1d_18 on 8 devices (2 processes)' in log
  assert 'Traceback' not in log

  # One writer: each logged step once in metrics.jsonl (every second one, and the one it stopped
  # at); one event file per start.
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  logged = [r['step'] for r in records if 'loss' in r]
  assert logged == sorted(set(range(2, 13, 2)) | {step})
  assert len(list((run / 'tensorboard').glob('events.out.tfevents.*'))) == 2

  # One process with the same 8 devices and global batch: the same clips in every step, so the
  # same final metrics, and the same losses up to the order of float sums across processes
  # (gloo), whose difference the tiny smoke model amplifies from step to step: under 1e-4
  # (relative) through step 6, about 3e-3 by step 12. (A two-process run that was never stopped
  # logs the resumed one's losses to the last digit.)
  assert jax.device_count() == 8
  config = smoke(ssv2_r2plus1d_18, data_dir, train__eval_every_epochs=1000.0,
                 train__max_steps=12)
  one = experiment.run(config, tmp_path / 'one')['1x1']
  two = json.loads((run / 'final_metrics.json').read_text())['1x1']
  assert (two['examples'], two['step']) == (one['examples'], one['step']) == (8, 12)
  # At step 12 the smoke model is still near chance (loss about ln 12), so which of its nearly
  # tied classes ranks fifth turns on those float-order differences (on jax 0.12.0.1 one clip of
  # 8 moved in or out of the top 5): the accuracies agree within one clip.
  for key in ('top1', 'top5'):
    assert abs(two[key] - one[key]) <= 100 / one['examples'] + 1e-9, (key, two, one)
  losses = lambda workdir: {r['step']: r['loss'] for r in map(json.loads, (
      workdir / 'metrics.jsonl').read_text().splitlines()) if 'loss' in r}
  two_losses, one_losses = losses(run), losses(tmp_path / 'one')
  assert sorted(two_losses) == logged and sorted(one_losses) == list(range(2, 13, 2))
  for step in one_losses:
    assert two_losses[step] == pytest.approx(one_losses[step], rel=1e-4 if step <= 6 else 1e-2)


def test_a_sigkilled_task_stops_the_job_in_bounded_time_naming_it(slurm, prepared_ssv2,
                                                                   tmp_path):
  env = {**process_env(4, PYTHON=sys.executable, JAX_COORDINATOR_PORT=str(free_port())),
         'SLURM_CONF': slurm['SLURM_CONF']}
  out, run = tmp_path / 'job.out', tmp_path / 'run'
  job = _submit(env, ['configs/ssv2_r2plus1d_18.py:smoke', str(run),
                      f'--config.data.data_dir={prepared_ssv2[0]}',
                      '--config.train.eval_every_epochs=1000', '--config.train.max_steps=400',
                      '--peer_timeout_s=5'], out)
  _wait(_checkpointed(run), 240, 'the first checkpoint')
  os.kill(_task_pid(job, 1), signal.SIGKILL)
  killed = time.monotonic()
  _wait(_ended(env, job), 60, 'the job to stop')
  # srun's --kill-on-bad-exit signals task 0, whose save waits for task 1 in vain: the peer
  # watch ends it after --peer_timeout_s (5 s here, and a beat).
  stopped_after = time.monotonic() - killed
  print(f'SLURM: the job ended {stopped_after:.1f} s after task 1 was killed')
  assert stopped_after < 20
  log = out.read_text()
  assert _job_state(env, job)['JobState'] == 'FAILED', log[-3000:]
  host = socket.gethostname()
  assert f'srun: error: {host}: task 1: Killed' in log, log[-3000:]
  errors = [line for line in log.splitlines() if line.startswith('error: ')]
  assert len(errors) == 1 and errors[0].startswith('error: process 1 of 2 (host '), log[-3000:]
  assert f'srun: error: {host}: task 0: Exited with exit code {liveness.EXIT_PEER_LOST}' in log
  assert 'Traceback' not in log and 'Terminating process' not in log, log[-3000:]
