"""The config finished once, where a command starts, and read-only below it.

A config file leaves two values to the run: `model.num_classes` 0 takes the prepared dataset's
count (or a run's classes.json, or a checkpoint's head), and `data.num_workers` -1 the loader
processes `input_pipeline.workers` chooses for the host. `for_data` opens the run's splits,
fills both in and returns the config locked and marked finished; the training loop, evaluation
and the program builder take only a finished config (`require`), and nothing below the command
copies or changes it.
"""
import copy
from typing import Sequence

import ml_collections
from absl import logging

from cstm_foundation.errors import ConfigError
from input_pipeline import workers

# Set on a finished config, outside its keys (it is not written to config.json).
_FINISHED = '_cstm_finished'


def finish(config: ml_collections.ConfigDict, *, num_classes: int, classes_from: str,
           accelerators: int = 0, process_count: int = 1,
           devices: int = 1) -> ml_collections.ConfigDict:
  """A finished copy of `config`: `model.num_classes` set from `num_classes` (the count of
  `classes_from`, named in messages) when it is 0, `data.num_workers` -1 resolved for this host
  and its `accelerators`, and the batch split for the job's `devices` (`fitted_batch`). A
  different non-zero class count is refused: it would train into NaN, or evaluate classes with
  no data."""
  if config.model.num_classes not in (0, num_classes):
    raise ConfigError(
        f'model.num_classes is {config.model.num_classes} but {classes_from} has {num_classes} '
        f"classes: set --config.model.num_classes={num_classes} (or 0 to take the dataset's "
        'count)')
  finished = copy.deepcopy(config)
  with finished.unlocked():
    finished.model.num_classes = num_classes
    finished.data.num_workers = workers.resolved(config.data, accelerators, process_count)
    finished.data.batch_size, finished.optim.grad_accum_steps = fitted_batch(config, devices)
  finished.lock()
  object.__setattr__(finished, _FINISHED, True)
  return finished


def fitted_batch(config: ml_collections.ConfigDict, devices: int) -> tuple[int, int]:
  """(`data.batch_size`, `optim.grad_accum_steps`) for `devices`: as configured, unless a
  device would hold more than `data.device_batch_max` clips of a step. Then the batch is split
  into accumulated micro-batches that fit, keeping the clips of an optimizer step (the
  recipe's: TSM's and TRN's 64), and one line says so."""
  batch, accumulated = config.data.batch_size, config.optim.grad_accum_steps
  limit = config.data.device_batch_max
  if not limit or batch <= limit * devices:
    return batch, accumulated
  split = next((k for k in range(2, batch + 1) if batch % k == 0
                and batch // k <= limit * devices and (batch // k) % devices == 0), None)
  if split is None:
    raise ConfigError(f'data.batch_size {batch} cannot be split into micro-batches of at most '
                      f'{limit} clips on each of {devices} devices (data.device_batch_max); set '
                      'data.batch_size and optim.grad_accum_steps yourself')
  logging.warning('data.batch_size %d is more than %d devices hold (data.device_batch_max %d '
                  'each): %d accumulated batches of %d make each optimizer step of %d clips '
                  '(optim.grad_accum_steps %d)', batch, devices, limit, split, batch // split,
                  batch * accumulated, accumulated * split)
  return batch // split, accumulated * split


def for_data(config: ml_collections.ConfigDict, splits: Sequence[str], *, accelerators: int = 0,
             process_count: int = 1, devices: int = 1
             ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """(`config` finished for its prepared dataset, the dataset's class names), after opening each
  of `splits` (a missing one is named now, not an epoch into the run)."""
  from input_pipeline import pipeline  # the data stack only where data is read
  class_names = None
  for split in splits:
    _, class_names = pipeline.open_split(config.data, split)
  return (finish(config, num_classes=len(class_names),
                 classes_from=f'the dataset {config.data.name} in {config.data.data_dir}',
                 accelerators=accelerators, process_count=process_count, devices=devices),
          list(class_names))


def without_data(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` finished for a command that reads no dataset (a compile report, a benchmark): its
  own `model.num_classes`, which must be set, and no loader processes."""
  if config.model.num_classes < 1:
    raise ConfigError(f'model.num_classes is {config.model.num_classes}: with no dataset to '
                      'take it from, set --config.model.num_classes (e.g. 174)')
  finished = finish(config, num_classes=config.model.num_classes, classes_from='the config')
  with finished.unlocked():
    finished.data.num_workers = 0
  return finished


def is_finished(config) -> bool:
  return getattr(config, _FINISHED, False)


def require(config) -> ml_collections.ConfigDict:
  """`config`, if it is finished; else a TypeError for the caller that skipped `finish`."""
  if not is_finished(config):
    raise TypeError('this takes a finished config: pass it through cstm_jax.config.finish first '
                    '(for_data, or finish)')
  return config
