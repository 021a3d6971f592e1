"""Launching as users do on clusters: each process's GPUs, and a SLURM job of two processes
(scripts/slurm_train.sbatch under a stand-in srun) killed, resumed and equal to one process."""
import json
import os
import pathlib
import signal
import sys

import jax
import pytest

from configs import ssv2_r2plus1d_18
from cstm_jax import launch, train
from runs import final_params, free_port, process_env, run_until, smoke

ROOT = pathlib.Path(__file__).resolve().parent.parent

SLURM_8_GPUS = {'CUDA_VISIBLE_DEVICES': '0,1,2,3,4,5,6,7', 'SLURM_NTASKS': '16',
                'SLURM_NODEID': '1'}


@pytest.mark.parametrize('environ, gpus, expected', [
    # One process per node (--ntasks-per-node=1): all of its GPUs, not only GPU 0.
    ({**SLURM_8_GPUS, 'SLURM_LOCALID': '0', 'SLURM_STEP_TASKS_PER_NODE': '1(x2)'}, 8,
     list(range(8))),
    # One per GPU, --gpus-per-task=1: it sees one GPU, GPU 0 for it, whatever its local rank.
    ({'CUDA_VISIBLE_DEVICES': '5', 'SLURM_LOCALID': '5', 'SLURM_GPUS_PER_TASK': '1',
      'SLURM_STEP_TASKS_PER_NODE': '8(x2)', 'SLURM_NODEID': '1'}, 1, [0]),
    # One per GPU, all GPUs visible to every task: the GPU of its local rank.
    ({**SLURM_8_GPUS, 'SLURM_LOCALID': '5', 'SLURM_STEP_TASKS_PER_NODE': '8(x2)'}, 8, [5]),
    # Four per node, two GPUs each; uneven task counts per node are read at SLURM_NODEID.
    ({**SLURM_8_GPUS, 'SLURM_LOCALID': '1', 'SLURM_TASKS_PER_NODE': '2,4'}, 8, [2, 3]),
    # Open MPI, one rank per GPU.
    ({'OMPI_COMM_WORLD_LOCAL_RANK': '3', 'OMPI_COMM_WORLD_LOCAL_SIZE': '8'}, 8, [3]),
    # Not under SLURM or MPI (--coordinator_address, TPU), or no GPUs: jax's own choice.
    ({'CUDA_VISIBLE_DEVICES': '0,1'}, 2, None),
    ({'SLURM_LOCALID': '0', 'SLURM_STEP_TASKS_PER_NODE': '1(x2)'}, 0, None),
])
def test_each_process_gets_its_gpus(environ, gpus, expected):
  assert launch.visible_gpus(environ) == gpus or 'CUDA_VISIBLE_DEVICES' not in environ
  assert launch.local_device_ids(environ, gpus) == expected


def test_cluster_size_from_the_environment():
  assert launch.cluster_processes({}) == 1
  assert launch.cluster_processes({'SLURM_NTASKS': '16'}) == 16
  assert launch.cluster_processes({'OMPI_COMM_WORLD_SIZE': '4'}) == 4
  assert launch.cluster_processes({'TPU_WORKER_HOSTNAMES': 'w0,w1,w2,w3'}) == 4


def test_slurm_job_of_two_processes_resumes_and_matches_one_process(prepared_ssv2, tmp_path):
  # Paths as a user writes them in a job script: `~` and a variable the shell did not expand.
  home = tmp_path / 'home'
  home.mkdir()
  (home / 'cstm').symlink_to(ROOT)
  data_dir = pathlib.Path(prepared_ssv2[0])
  overrides = ['--config.train.eval_every_epochs=1000']  # 6 steps, a checkpoint every 2
  job = ['bash', 'scripts/slurm_train.sbatch', '~/cstm/configs/ssv2_r2plus1d_18.py:smoke',
         '~/runs/two', '--config.data.data_dir=$DATA/' + data_dir.name, *overrides]
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text(f'#!/bin/sh\nexec {sys.executable} '
                                f'{ROOT / "tests" / "fake_srun.py"} "$@"\n')
  (bin_dir / 'srun').chmod(0o755)
  env = process_env(4, HOME=str(home), DATA=str(data_dir.parent), PYTHON=sys.executable,
                    PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID='4242',
                    SLURM_NTASKS='2', SLURM_NNODES='2', JAX_COORDINATOR_PORT=str(free_port()))
  run = home / 'runs' / 'two'
  checkpointed = lambda: any(p.name.isdigit() for p in (run / 'checkpoints').glob('*'))

  # Killed (both processes, SIGKILL) once the first checkpoint is complete.
  code, err = run_until(job, env, checkpointed)
  assert code == -signal.SIGKILL or code == 137, err[-3000:]
  assert checkpointed() and not (run / 'final_metrics.json').exists()
  killed_at, _ = final_params(run)
  # The same sbatch line resumes and finishes.
  env['JAX_COORDINATOR_PORT'] = str(free_port())
  code, err = run_until(job, env, lambda: False)
  assert code == 0, err[-3000:]
  assert f'Resuming from the checkpoint of step {killed_at}' in err
  assert 'Training none/r2plus1d_18 on 8 devices (2 processes)' in err

  # One writer, and what the killed start logged after its checkpoint dropped: each logged
  # step once in metrics.jsonl; one event file per start.
  records = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  logged = [r['step'] for r in records if 'loss' in r]
  assert logged == [2, 4, 6]
  assert len(list((run / 'tensorboard').glob('events.out.tfevents.*'))) == 2

  # One process with the same 8 devices and global batch: the same clips in every step, so the
  # same losses (up to the order of float sums across processes) and the same final metrics.
  assert jax.device_count() == 8
  config = smoke(ssv2_r2plus1d_18, data_dir, train__eval_every_epochs=1000.0)
  one = train.train_and_evaluate(config, tmp_path / 'one')['1x1']
  two = json.loads((run / 'final_metrics.json').read_text())['1x1']
  for key in ('top1', 'top5', 'mean_class_accuracy', 'examples', 'step'):
    assert two[key] == pytest.approx(one[key]), key
  losses = lambda workdir: {r['step']: r['loss'] for r in map(json.loads, (
      workdir / 'metrics.jsonl').read_text().splitlines()) if 'loss' in r}
  assert losses(run) == pytest.approx(losses(tmp_path / 'one'), rel=1e-4)
  assert sorted(losses(run)) == [2, 4, 6]
