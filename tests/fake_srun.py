"""A stand-in for SLURM's `srun` on one machine, for tests: starts SLURM_NTASKS copies of the
command, each with the variables srun gives a task, as if each task ran on its own node
(`SLURM_NNODES`, default one task a node). srun's own options are ignored. SIGTERM is passed
on to every task; the exit status is the first non-zero one."""
import os
import signal
import subprocess
import sys


def main(argv):
  command = argv[next(i for i, a in enumerate(argv) if not a.startswith('-')):]
  tasks = int(os.environ['SLURM_NTASKS'])
  nodes = int(os.environ.get('SLURM_NNODES', tasks))
  per_node = tasks // nodes
  processes = []
  for rank in range(tasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
               SLURM_NODEID=str(rank // per_node), SLURM_STEP_ID='0',
               SLURM_STEP_NODELIST='localhost', SLURM_STEP_NUM_NODES=str(nodes),
               SLURM_STEP_NUM_TASKS=str(tasks),
               SLURM_STEP_TASKS_PER_NODE=f'{per_node}(x{nodes})')
    processes.append(subprocess.Popen(command, env=env))
  signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in processes])
  codes = [p.wait() for p in processes]
  return next((c for c in codes if c), 0)


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
