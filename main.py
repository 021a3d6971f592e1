"""Entry point: `python main.py --config=configs/ssv2_16f.py --workdir=DIR`.

Trains and evaluates (resuming from the workdir's latest checkpoint when there is one);
`--config.mode=eval` evaluates the workdir's best (or `--config.eval.checkpoint=latest`)
checkpoint without training. The config is locked: a misspelt `--config.x=...` is an error.

Several processes (multi-host GPU, TPU pods): run the same command on every host. Under SLURM,
Open MPI or on a Cloud TPU `jax.distributed` finds its peers itself; elsewhere pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and plots.')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-process).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
flags.DEFINE_integer('process_id', None, 'This process (multi-process).')
flags.mark_flags_as_required(['config', 'workdir'])

def cluster_processes() -> int:
  """Processes in this job as SLURM, Open MPI or a Cloud TPU slice announce them."""
  for variable in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if variable in os.environ:
      return int(os.environ[variable])
  return len(os.environ.get('TPU_WORKER_HOSTNAMES', 'localhost').split(','))


def initialize_distributed() -> None:
  """jax.distributed.initialize() when this job has several processes."""
  import jax
  if FLAGS.coordinator_address:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  elif cluster_processes() > 1:
    jax.distributed.initialize()  # finds its peers from the cluster's environment


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from cstm_jax import logs
  logs.quiet_library_logs()
  initialize_distributed()
  import jax
  from cstm_jax import train
  config = FLAGS.config
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  if config.mode == 'train':
    train.train_and_evaluate(config, FLAGS.workdir)
  elif config.mode == 'eval':
    train.evaluate(config, FLAGS.workdir)
  else:
    raise app.UsageError(f"config.mode {config.mode!r} is not 'train' or 'eval'")


if __name__ == '__main__':
  app.run(main)
