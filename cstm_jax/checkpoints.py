"""Checkpoints (orbax): the run's latest and best checkpoints, and pretrained variables.

`workdir/checkpoints/<step>/` holds the train state, this process's data-iterator state and the
config, written asynchronously; `workdir/best/<step>/` the state with the best validation top-1.
A variables checkpoint (`{'params', 'batch_stats'}`, e.g. from `cstm_jax.convert`) is what
`config.train.init_from` loads.
"""
import json

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cstm_jax import paths

# Orbax splits each replicated array into per-replica slices before writing it ("replica
# parallel"); for these models' hundreds of small arrays the slicing costs seconds a save.
ocp.type_handlers.register_type_handler(
    jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


class RunCheckpoints:
  """The latest (`max_to_keep`) and the best checkpoints of a run."""

  def __init__(self, workdir, max_to_keep: int = 2):
    workdir = paths.resolve(workdir)
    self.latest = ocp.CheckpointManager(
        workdir / 'checkpoints',
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        item_names=('state', 'data', 'config'))
    self.best = ocp.CheckpointManager(
        workdir / 'best', options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True),
        item_names=('state', 'config'))
    self.best_file = workdir / 'best' / 'best.json'

  def save(self, step: int, state, data_iterator, config, force: bool = False) -> None:
    import grain  # here: variables checkpoints and the benchmark work without the data stack
    self.latest.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        config=ocp.args.JsonSave(config.to_dict())), force=force)

  def restore_latest(self, abstract_state, data_iterator):
    """(state, step) from the latest checkpoint, the data iterator restored in place; or
    (None, None) when the run has no checkpoint yet."""
    step = self.latest.latest_step()
    if step is None:
      return None, None
    import grain
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored['state'], step

  def best_top1(self) -> float:
    if self.best_file.exists():
      return json.loads(self.best_file.read_text())['top1']
    return -1.0

  def save_best(self, step: int, state, config, metrics: dict) -> bool:
    """Saves `state` as the best if its top-1 beats the best so far; returns whether it did."""
    if metrics['top1'] <= self.best_top1():
      return False
    self.best.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict())),
        force=True)
    self.best.wait_until_finished()
    if jax.process_index() == 0:
      self.best_file.write_text(json.dumps({'step': step, **metrics}, indent=1))
    return True

  def restore_state(self, which: str, abstract_state):
    """(state, step) of the 'latest' or 'best' checkpoint, for evaluation."""
    manager = {'latest': self.latest, 'best': self.best}.get(which)
    if manager is None:
      raise ValueError(f"checkpoint {which!r} is not 'latest' or 'best'")
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f'no {which} checkpoint in {manager.directory}')
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    return restored['state'], step

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def save_variables(path, variables) -> None:
  """Writes `{'params': ..., 'batch_stats': ...}` as an orbax checkpoint at `path`."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(paths.resolve(path), flax.core.unfreeze(variables), force=True)
  checkpointer.wait_until_finished()


def load_variables(path) -> dict:
  path = paths.resolve(path)
  if not path.exists():
    raise FileNotFoundError(f'init_from: no checkpoint at {path}')
  return ocp.StandardCheckpointer().restore(path)


def merge_pretrained(variables, pretrained) -> tuple[dict, dict]:
  """Copies every pretrained leaf whose path and shape match into `variables`.

  Returns (merged variables, report with 'loaded', 'mismatched' and 'missing' path lists).
  A head of another class count shows up under 'mismatched' and keeps its initial values.
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep='/')
  source = flax.traverse_util.flatten_dict(flax.core.unfreeze(pretrained), sep='/')
  report = {'loaded': [], 'mismatched': [], 'missing': []}
  for key, value in flat.items():
    if key not in source:
      report['missing'].append(key)
    elif np.shape(source[key]) != np.shape(value):
      report['mismatched'].append(key)
    else:
      flat[key] = jax.numpy.asarray(source[key], dtype=value.dtype)
      report['loaded'].append(key)
  if not report['loaded']:
    raise ValueError('init_from: no parameter of the checkpoint matches this model '
                     f'(model has e.g. {sorted(flat)[:3]}, checkpoint {sorted(source)[:3]})')
  logging.info('init_from: loaded %d arrays; %d mismatched (%s); %d not in the checkpoint',
               len(report['loaded']), len(report['mismatched']),
               ', '.join(report['mismatched'][:4]), len(report['missing']))
  return flax.traverse_util.unflatten_dict(flat, sep='/'), report
