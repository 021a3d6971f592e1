"""Checkpoints (orbax): the run's latest and best checkpoints, and pretrained variables.

`workdir/checkpoints/<step>/` holds the train state, this process's data-iterator state and the
config, written asynchronously; `workdir/best/<step>/` the state with the best validation top-1.
A variables checkpoint (`{'params', 'batch_stats'}`, e.g. from `cstm_jax.inference.convert`) is what
`config.train.init_from` loads.
"""
import contextlib
import json
import logging as py_logging
import re
from typing import Optional

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from cstm_foundation import paths
from cstm_foundation.errors import BadFile, ConfigError, MissingFile, UserError, first_line
from cstm_jax.config import defaults


def _register_array_handler() -> None:
  """Orbax splits each replicated array into per-replica slices before writing it ("replica
  parallel"); for these models' hundreds of small arrays the slicing costs seconds a save. The
  handler without it replaces orbax's, without the warning orbax logs for a replaced handler at
  every command's start."""
  absl_logger = py_logging.getLogger('absl')
  level = absl_logger.level
  absl_logger.setLevel(py_logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
  finally:
    absl_logger.setLevel(level)


_register_array_handler()


def _drop_callbacks_to_closed_loops() -> None:
  """When one write of an orbax save fails, orbax closes the save's event loop while tensorstore
  still finishes the other writes; each then schedules its callback onto the closed loop from a
  C++ thread, which prints a 'RuntimeError: Event loop is closed' traceback per array. Such a
  callback has no loop left to run on: it is dropped instead."""
  import asyncio
  schedule = asyncio.BaseEventLoop.call_soon_threadsafe
  if getattr(schedule, 'drops_closed', False):
    return

  def call_soon_threadsafe(self, callback, *args, **kwargs):
    if self.is_closed():
      return None
    return schedule(self, callback, *args, **kwargs)

  call_soon_threadsafe.drops_closed = True
  asyncio.BaseEventLoop.call_soon_threadsafe = call_soon_threadsafe


_drop_callbacks_to_closed_loops()


class CheckpointNotWritten(UserError):
  """A checkpoint could not be written (a full disk, no permission, a bucket error); the message
  names the step, the folder, the cause and the intact checkpoints."""


_OS_REASON = re.compile(r'No space left on device|File too large|Permission denied|'
                        r'Read-only file system|Disk quota exceeded')
_TMP_STEP = re.compile(r'([^\s"\']+?)/(\d+)\.orbax-checkpoint-tmp')


class RunCheckpoints:
  """The latest (`max_to_keep`) and the best checkpoints of a run. A save that fails (at once or
  in orbax's background threads, found at the next save or wait) raises `CheckpointNotWritten`
  once; orbax keeps an unfinished step in a `<step>.orbax-checkpoint-tmp` folder, which no
  restore reads."""

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

  def save(self, step: int, state, data_iterator, *, config, force: bool = False) -> None:
    import grain  # here: variables checkpoints and the benchmark work without the data stack
    with self._writing(step, self.latest):
      self.latest.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=grain.checkpoint.CheckpointSave(data_iterator),
          config=ocp.args.JsonSave(config.to_dict())), force=force)

  @contextlib.contextmanager
  def _writing(self, step: int, manager):
    """Turns a failed write inside the block (of `step`, or of an earlier asynchronous save)
    into one `CheckpointNotWritten`."""
    try:
      yield
    except UserError:
      raise
    except Exception as error:  # orbax raises what the file system or the bucket said
      text = str(error)
      known = _OS_REASON.search(text)
      first = known.group(0) if known else first_line(error)
      where = _TMP_STEP.search(text)
      folder, failed = ((where.group(1), int(where.group(2))) if where else
                        (str(manager.directory), step))
      intact = {name: _intact_steps(m.directory) for name, m in
                (('checkpoints', self.latest), ('best', self.best))}
      listed = '; '.join(f'{name}: {", ".join(map(str, steps)) or "none"}'
                         for name, steps in intact.items())
      resume = (f'it resumes from step {max(intact["checkpoints"])}' if intact['checkpoints']
                else 'it starts again from the beginning')
      raise CheckpointNotWritten(
          f'the checkpoint of step {failed} could not be written to {folder} ({first}); '
          f'nothing of it is used. Intact checkpoints: {listed}. Free space (or fix the '
          f'permissions or the bucket), then run the same command: {resume}') from error

  def restore_latest(self, abstract_state, data_iterator, config):
    """(state, step) from the newest intact checkpoint, the data iterator restored in place; or
    (None, None) when the run has no checkpoint yet. See `_restore_newest`."""
    import grain  # here: variables checkpoints and the benchmark work without the data stack
    return _restore_newest(self.latest, config, lambda: ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator)))

  def best_top1(self) -> float:
    if self.best_file.exists():
      return json.loads(self.best_file.read_text())['top1']
    return -1.0

  def save_best(self, step: int, state, config, metrics: dict) -> bool:
    """Saves `state` as the best if its top-1 beats the best so far; returns whether it did."""
    if metrics['top1'] <= self.best_top1():
      return False
    with self._writing(step, self.best):
      self.best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config.to_dict())),
          force=True)
      self.best.wait_until_finished()
    if jax.process_index() == 0:
      self.best_file.write_text(json.dumps({'step': step, **metrics}, indent=1))
    return True

  def restore_state(self, which: str, abstract_state, config):
    """(state, step) of the 'latest' or 'best' checkpoint, for evaluation."""
    manager = {'latest': self.latest, 'best': self.best}.get(which)
    if manager is None:
      raise UserError(f"eval.checkpoint {which!r} is not 'latest' or 'best'")
    state, step = _restore_newest(manager, config, lambda: ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))
    if state is None:
      raise UserError(f'{manager.directory}: no {which} checkpoint (has this run trained?)')
    return state, step

  def latest_step(self) -> Optional[int]:
    """The step of the newest complete checkpoint (None: none yet)."""
    return self.latest.latest_step()

  def wait(self) -> None:
    with self._writing(self.latest.latest_step() or 0, self.latest):
      self.latest.wait_until_finished()
      self.best.wait_until_finished()

  def close(self) -> None:
    with self._writing(self.latest.latest_step() or 0, self.latest):
      self.latest.close()
      self.best.close()


def _intact_steps(folder) -> list[int]:
  """The steps of `folder` that orbax finished writing (a step folder without the tmp suffix)."""
  folder = paths.resolve(folder)
  if not folder.exists():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


# Blocks whose settings decide the shapes of a train state: a checkpoint that does not restore
# is compared with the current config on these before it is called corrupt.
STATE_BLOCKS = ('model', 'optim')


def _restore_newest(manager, config, restore_args):
  """(restored state, step) from the newest checkpoint of `manager` that restores; (None, None)
  when there is none.

  A checkpoint written by a different model or optimizer is an error naming the differing
  config keys. A checkpoint that fails to restore otherwise (a truncated file of a killed copy,
  a damaged disk) is corrupt: it is moved to `<run>/corrupt/<folder>_<step>` with a warning and
  the next older one is tried; when none is intact, the error names the folder.
  """
  corrupt = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=restore_args())
    except Exception as error:  # orbax and tensorstore raise many kinds for a damaged file
      differences = config_differences(saved_config(manager, step), config)
      if differences:
        raise UserError(
            f'{manager.directory / str(step)} was written by a different model or optimizer '
            f'({"; ".join(differences)}); use the run\'s settings, or another --workdir to '
            'start a new run') from error
      reason = short_reason(error)
      logging.warning('Checkpoint %s does not restore (%s); trying an older one',
                      manager.directory / str(step), reason)
      corrupt.append((step, reason))
      continue
    if corrupt:
      _set_aside(manager, [s for s, _ in corrupt])
      logging.warning('Using step %d, the newest intact checkpoint', step)
    return restored['state'], step
  if corrupt:
    raise UserError(
        f'{manager.directory}: no intact checkpoint (step {corrupt[0][0]}: {corrupt[0][1]}); '
        'move the folder aside to start the run afresh')
  return None, None


def saved_config(manager, step) -> dict | None:
  """The config a checkpoint was saved with, or None when it cannot be read."""
  try:
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
        'config']
  except Exception:  # a damaged config file is one more sign of a corrupt checkpoint
    return None


def config_differences(saved: dict | None, config) -> list[str]:
  """'model.width: 0.25 in the checkpoint, 0.5 now' for each differing key of STATE_BLOCKS."""
  if saved is None or config is None:
    return []
  flat = lambda d: flax.traverse_util.flatten_dict(d, sep='.')
  now = flat({b: json.loads(config[b].to_json()) for b in STATE_BLOCKS if b in config})
  saved = defaults.upgraded(saved)  # written before a key changed name: today's keys
  then = flat({b: saved[b] for b in STATE_BLOCKS if b in saved})
  return [f'{key}: {then.get(key)!r} in the checkpoint, {now.get(key)!r} now'
          for key in sorted(set(now) | set(then)) if now.get(key) != then.get(key)]


def _set_aside(manager, steps) -> None:
  """Moves corrupt step folders out of the manager's view (nothing is deleted)."""
  if jax.process_index() == 0:
    aside = manager.directory.parent / 'corrupt'
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      target = aside / f'{manager.directory.name}_{step}'
      while target.exists():
        target = target.with_name(target.name + '_again')
      (manager.directory / str(step)).rename(target)
      logging.warning('Moved the corrupt checkpoint %s to %s', manager.directory / str(step),
                      target)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('corrupt checkpoints set aside')
  manager.reload()


def save_variables(path, variables) -> None:
  """Writes `{'params': ..., 'batch_stats': ...}` as an orbax checkpoint at `path`."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(paths.resolve(path), flax.core.unfreeze(variables), force=True)
  checkpointer.wait_until_finished()


def load_variables(path) -> dict:
  """The `{'params', 'batch_stats'}` of a variables checkpoint (`save_variables`)."""
  path = paths.resolve(path)
  if not path.exists():
    raise MissingFile(f'{path}: no such variables checkpoint')
  try:
    return ocp.StandardCheckpointer().restore(path)
  except Exception as error:  # orbax and tensorstore raise many kinds for a damaged file
    raise BadFile(f'{path}: not a readable variables checkpoint ({short_reason(error)}); write '
                  'it again with python -m cstm_jax.inference.convert') from error


def short_reason(error: Exception) -> str:
  """The first 200 characters of an error, without tensorstore's dump of its spec."""
  text = ' '.join(str(error).split()).split(' See full')[0][:200]
  return f'{type(error).__name__}: {text}'


# Modules that may start fresh in init_from: the classifiers (`head`, TRN's relations `trn`),
# which another class count replaces, and the modules a 2D network lacks (this project's
# `temporal` modules, STM's `channel_temporal` and `motion`, S3D-G's self-gating `gate`).
HEADS = ('head', 'trn')
NEW_MODULES = ('temporal', 'channel_temporal', 'motion', 'gate')


def merge_pretrained(variables, pretrained, partial: bool = False,
                     source: str = 'the checkpoint') -> tuple[dict, dict]:
  """Copies every pretrained leaf whose path and shape match into `variables`.

  Returns (merged variables, report with 'loaded', 'mismatched' and 'missing' path lists).
  Only the heads (another class count) and temporal modules a 2D network lacks may keep their
  initial values; any other backbone weight that does not load is an error listing them,
  unless `partial` (then it is logged as a warning).
  """
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep='/')
  pretrained = flax.traverse_util.flatten_dict(flax.core.unfreeze(pretrained), sep='/')
  report = {'loaded': [], 'mismatched': [], 'missing': []}
  for key, value in flat.items():
    if key not in pretrained:
      report['missing'].append(key)
    elif np.shape(pretrained[key]) != np.shape(value):
      report['mismatched'].append(key)
    else:
      flat[key] = jax.numpy.asarray(pretrained[key], dtype=value.dtype)
      report['loaded'].append(key)
  head = lambda key: any(f'/{name}/' in key for name in HEADS)
  unloaded = ([f'{k} {np.shape(pretrained[k])} for {np.shape(flat[k])}'
               for k in report['mismatched'] if not head(k)]
              + [f'{k} (not in it)' for k in report['missing']
                 if not head(k) and not any(f'/{name}/' in k for name in NEW_MODULES)])
  if unloaded and not report['loaded']:
    raise ConfigError(f'init_from {source}: no parameter matches this model (model has e.g. '
                      f'{sorted(flat)[:2]}, the checkpoint {sorted(pretrained)[:2]})')
  if unloaded:
    message = (f'init_from {source}: {len(unloaded)} of {len(flat)} arrays of this model do not '
               f'load: {", ".join(unloaded[:6])}{" ..." if len(unloaded) > 6 else ""}')
    if not partial:
      raise ConfigError(f'{message}. Were the weights made for another width or backbone? Set '
                        '--config.train.init_partial=True to start those fresh on purpose.')
    logging.warning('%s; they start from their initialisation (train.init_partial)', message)
  logging.info('init_from %s: loaded %d arrays; %d start fresh (head, new temporal modules)',
               source, len(report['loaded']), len(report['mismatched']) + len(report['missing']))
  return flax.traverse_util.unflatten_dict(flat, sep='/'), report
