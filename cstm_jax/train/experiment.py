"""`run(config, workdir)`: an experiment as `main.py` runs it once its processes have started.

The one place a run's config is finished (`config/finish.py`: the class count of its dataset,
the loader processes of this host); training, evaluation and the program builder below take it
read-only.
"""
import jax
import ml_collections

from cstm_foundation import stopping
from cstm_jax.config import finish
from cstm_jax.distributed import sharding, stops
from cstm_jax.train import evaluation, loop, program


def run(config: ml_collections.ConfigDict, workdir) -> dict:
  """`config` finished for this host and its dataset (the splits it reads opened now, so a
  missing one stops the run before it starts), then training and the final evaluation
  (`config.mode` 'train') or the evaluation of a checkpoint ('eval'). Returns the final results
  of each of `config.eval.final_views` ({} when a training run was asked to stop)."""
  if stops.agreed():  # every process, at the same point
    stopping.check('before the run started')
  splits = ((config.data.train_split, config.data.eval_split) if config.mode == 'train' else
            (config.data.eval_split,))
  config, class_names = finish.for_data(config, splits,
                                        accelerators=sharding.local_accelerators(),
                                        process_count=jax.process_count(),
                                        devices=jax.device_count())
  mesh = program.make_mesh(config)
  if config.mode == 'train':
    return loop.train_and_evaluate(config, workdir, mesh=mesh, class_names=class_names)
  return evaluation.evaluate_checkpoint(config, workdir, mesh=mesh, class_names=class_names)
