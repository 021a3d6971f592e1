"""Training entry point: `python main.py --config=configs/ssv2_16f.py --workdir=DIR` in a
checkout, `cstm-train --config=...` once installed.

Trains and evaluates (resuming from the workdir's latest checkpoint when there is one);
`--config.mode=eval` evaluates the workdir's best (or `--config.eval.checkpoint=latest`)
checkpoint without training. The config is locked: a misspelt `--config.x=...` is an error.
The workdir may be local or in Cloud Storage (`gs://bucket/runs/x`); `~` and `$VARS` in paths
are expanded.

Several processes (multi-host GPU, TPU pods): run the same command on every host. Under SLURM,
Open MPI or on a Cloud TPU slice the processes find each other
(`cstm_jax/distributed/launch.py` picks each one's GPUs); elsewhere pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
"""
import faulthandler
import sys

from absl import app, flags, logging

from cstm_foundation import stopping
from cstm_foundation.errors import debugging
from cstm_foundation.commands import run_main
from cstm_jax.config import loader
from cstm_jax.distributed import launch, liveness

FLAGS = flags.FLAGS
loader.define_config_flag()
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and plots (local or gs://).')
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 (multi-process).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
flags.DEFINE_integer('process_id', None, 'This process (multi-process).')
flags.DEFINE_list('local_device_ids', None,
                  'GPUs this process uses, as it numbers them (default: chosen from the SLURM or '
                  'Open MPI layout; all visible GPUs for one process per node).')
flags.DEFINE_float('peer_timeout_s', liveness.DEFAULT_TIMEOUT_S,
                   'Multi-process: stop every process this many seconds after one of them stops '
                   'answering (killed, lost host), with a line naming it and exit status 75; 0 '
                   "leaves it to JAX's heartbeat (which aborts).")
flags.DEFINE_float('initialization_timeout_s', launch.DEFAULT_INITIALIZATION_TIMEOUT_S,
                   'Multi-process: how long a process waits for every process to join the job '
                   '(they may start minutes apart) before it stops with a line saying which it '
                   'waited for and exit status 75; 0 leaves it to JAX (which aborts).')
flags.mark_flag_as_required('workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from cstm_foundation import logs
  logs.quiet_library_logs()
  logs.quiet_exit_warnings()
  if not debugging():
    # absl's faulthandler dumps every thread and extension module when JAX aborts the process
    # (a multi-process job whose coordinator died): JAX's own line says what happened.
    faulthandler.disable()
  config = FLAGS.config
  if config.mode not in ('train', 'eval'):
    raise app.UsageError(f"config.mode {config.mode!r} is not 'train' or 'eval'")
  launch.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                    device_ids=FLAGS.local_device_ids and [int(i) for i in FLAGS.local_device_ids],
                    peer_timeout_s=FLAGS.peer_timeout_s,
                    initialization_timeout_s=FLAGS.initialization_timeout_s)
  stopping.reclaim()  # from JAX's distributed runtime, whose threads may receive them
  import jax
  from cstm_jax.distributed import compile_cache
  from cstm_jax.train import experiment
  compile_cache.enable(compile_cache.config_setting(config))
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  with liveness.watched(timeout_s=FLAGS.peer_timeout_s, workdir=FLAGS.workdir):
    experiment.run(config, FLAGS.workdir)


def cli() -> None:
  """The `cstm-train` command (`python main.py` in a checkout)."""
  stopping.install(at_safe_points=True)  # before JAX and the loader start threads (`stopping`)
  # absl's --help lists the flags of the script that runs: make these the script's.
  for flag in [FLAGS['config']] + FLAGS.get_flags_for_module(__name__):
    FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(lambda argv: run_main(main, argv, at_safe_points=True),
          flags_parser=loader.parse_flags)


if __name__ == '__main__':
  cli()
