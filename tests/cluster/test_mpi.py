"""Training under Open MPI's mpirun (Debian's openmpi-bin 4.1), as the README starts it: two
ranks of 4 CPU devices each; a rank SIGKILLed stops the job at once, and the same command
resumes."""
import os
import pathlib
import signal
import subprocess
import sys
import time

from runs import ROOT, process_env


def _rank_pid(rank: int) -> int:
  for entry in pathlib.Path('/proc').iterdir():
    try:
      environ = (entry / 'environ').read_bytes().split(b'\0')
      cmdline = (entry / 'cmdline').read_bytes()
    except (OSError, NotADirectoryError):
      continue
    if b'main.py' in cmdline and f'OMPI_COMM_WORLD_RANK={rank}'.encode() in environ:
      return int(entry.name)
  raise AssertionError(f'no rank {rank}')


def test_mpirun_trains_a_killed_rank_stops_the_job_and_the_same_command_resumes(
    cluster_tools, prepared_ssv2, tmp_path):
  run = tmp_path / 'run'
  # The README's command (python3 as this test's interpreter), two ranks on this machine.
  command = ['mpirun', '-np', '2', '-npernode', '2', sys.executable, 'main.py',
             '--config=configs/ssv2_r2plus1d_18.py:smoke', f'--workdir={run}',
             f'--config.data.data_dir={prepared_ssv2[0]}',
             '--config.train.eval_every_epochs=1000', '--config.train.max_steps=30']
  # mpirun refuses root unless told; CI runs as root.
  env = process_env(4, OMPI_ALLOW_RUN_AS_ROOT='1', OMPI_ALLOW_RUN_AS_ROOT_CONFIRM='1')
  job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 240
  while not any(p.name.isdigit() for p in (run / 'checkpoints').glob('*')):
    assert time.monotonic() < deadline and job.poll() is None, job.communicate()[0][-3000:]
    time.sleep(0.2)
  os.kill(_rank_pid(1), signal.SIGKILL)
  killed = time.monotonic()
  out, _ = job.communicate(timeout=120)
  stopped_after = time.monotonic() - killed
  print(f'Open MPI: mpirun ended {stopped_after:.1f} s after rank 1 was killed')
  assert stopped_after < 20
  assert job.returncode != 0
  assert 'mpirun noticed that process rank 1' in out and 'exited on signal 9 (Killed)' in out, \
      out[-3000:]
  assert not (run / 'final_metrics.json').exists()

  # The same command resumes from the last checkpoint and finishes.
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Resuming from the checkpoint of step' in result.stderr
  assert 'Training none/r2plus1d_18 on 8 devices (2 processes)' in result.stderr
  assert (run / 'final_metrics.json').exists()
  assert 'Traceback' not in result.stderr
