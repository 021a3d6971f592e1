"""Training: `train_and_evaluate(config, workdir)` trains (resuming where a run stopped) and
evaluates the result.

Reads top to bottom: where a run starts (resume, init_from or scratch), then the loop: data,
model and optimizer, state, steps, and the loop that logs, saves and evaluates. The pieces
live one level down: `train_state` (model, optimizer, sharded state), `steps` (jitted steps),
`evaluation` (metrics over a split), `checkpoints`.
"""
import json
import signal
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from cstm_jax.train import checkpoints, evaluation, plots, steps, train_state
from cstm_jax.distributed import compile_cache, sharding, workdir_lock
from cstm_jax.config import loader
from cstm_foundation import paths
from cstm_foundation.errors import UserError
from cstm_foundation.progress import format_seconds
from cstm_jax.train.writer import MetricWriter, read_metrics
from input_pipeline import pipeline, workers
from input_pipeline.prefetch import Prefetched


class NonFiniteLoss(UserError, FloatingPointError):
  """Training diverged; nothing reached through the diverging step was saved."""


# A log window whose wall time went this much to waiting for batches is input-bound.
INPUT_BOUND_FRACTION = 0.2
INPUT_BOUND_WARN_EVERY_S = 600.0


# --- Where a run starts -------------------------------------------------------------------------

class Start(NamedTuple):
  state: Any  # the train state, restored or fresh
  shardings: Any  # the state's shardings
  step: int  # the first step to run


def initial_state(config, model, tx, *, mesh, clips_shape, run_checkpoints,
                  train_iterator) -> Start:
  """Resume > init_from > scratch."""
  abstract, shardings = train_state.state_layout(model, tx, clips_shape, mesh=mesh,
                                                 threshold=config.mesh.shard_threshold)
  restored, step = run_checkpoints.restore_latest(abstract, train_iterator, config)
  if restored is not None:
    logging.info('Resuming from the checkpoint of step %d', step)
    return Start(restored, shardings, step)
  state, _ = train_state.create_train_state(model, tx, clips_shape, mesh=mesh,
                                            rng=jax.random.key(config.train.seed),
                                            shardings=shardings)
  if config.train.init_from:
    pretrained = checkpoints.load_variables(config.train.init_from)
    merged, _ = checkpoints.merge_pretrained(
        {'params': state.params, 'batch_stats': state.batch_stats}, pretrained,
        config.train.init_partial, config.train.init_from)
    merged = jax.device_put(merged, {'params': shardings.params,
                                     'batch_stats': shardings.batch_stats})
    state = state.replace(params=merged['params'], batch_stats=merged['batch_stats'])
    logging.info('Initialised from %s', config.train.init_from)
  return Start(state, shardings, 0)


# --- Training loop ----------------------------------------------------------------------------

class Preemption:
  """Turns SIGTERM into a flag the loop checks, so it can save and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    logging.warning('SIGTERM: saving a checkpoint and stopping')
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint) and evaluates the result,
  holding the workdir's lock (`workdir_lock`: one run per workdir).

  Returns the final evaluation results of each of `config.eval.final_views`.
  """
  workdir = paths.resolve(workdir)
  mesh = train_state.setup_mesh(config)
  main_process = jax.process_index() == 0
  if main_process:
    _check_writable(workdir)
  with workdir_lock.WorkdirLock(workdir, active=main_process):
    return _train_and_evaluate(config, workdir, mesh, main_process)


def _train_and_evaluate(config, workdir, mesh, main_process) -> dict:
  logging.info('Opening the dataset and building %s/%s on %d devices', config.model.temporal,
               config.model.backbone, jax.device_count())

  # Data.
  config = loader.with_loader_workers(config, train_state.local_accelerators(),
                                             jax.process_count())
  train_data = pipeline.train_dataset(config.data, jax.process_index(), jax.process_count())
  train_source, class_names = pipeline.open_split(config.data, config.data.train_split)
  # The evaluation split is checked now, not found missing an epoch later.
  pipeline.open_split(config.data, config.data.eval_split)
  config = loader.with_dataset_classes(config, class_names)
  train_size = len(train_source)
  steps_per_epoch = max(1, train_size // config.data.batch_size)
  optimizer_steps = int(config.optim.epochs * steps_per_epoch)
  total_steps = optimizer_steps * config.optim.grad_accum_steps
  if config.train.max_steps > 0:
    total_steps = min(total_steps, config.train.max_steps)
  eval_every = max(1, int(config.train.eval_every_epochs * steps_per_epoch
                          * config.optim.grad_accum_steps))

  # Model and optimizer.
  model, schedule, tx, clips_shape = train_state.model_and_optimizer(config, steps_per_epoch)

  # State, restored or fresh.
  run_checkpoints = checkpoints.RunCheckpoints(workdir, config.train.keep_checkpoints)
  train_iterator = iter(train_data)
  state, shardings, start = initial_state(config, model, tx, mesh=mesh, clips_shape=clips_shape,
                                          run_checkpoints=run_checkpoints,
                                          train_iterator=train_iterator)
  train_step = steps.jit_train_step(
      steps.make_train_step(model, schedule, config.data.colour, config.optim.grad_accum_steps),
      shardings, mesh, config.xla.gpu_conv_nhwc)
  eval_step = steps.jit_eval_step(model, mesh, config.data.colour, config.xla.gpu_conv_nhwc)
  rng = jax.random.key(config.train.seed + 1)
  writer = MetricWriter(workdir, start)
  # Closed however the run ends: tensorboardX's own exit hook would start a thread while the
  # interpreter shuts down, which Python 3.12 refuses with a traceback.
  try:
    if main_process:
      (workdir / 'config.json').write_text(config.to_json(indent=1))
      (workdir / 'classes.json').write_text(json.dumps(list(class_names), indent=0))  # predict
      logging.info('Training %s/%s on %d devices (%d processes): %d videos, %d steps of %d clips '
                   '(%d per epoch), starting at step %d; %d loader processes',
                   config.model.temporal, config.model.backbone, jax.device_count(),
                   jax.process_count(), train_size, total_steps, config.data.batch_size,
                   steps_per_epoch, start, config.data.num_workers)

    # Batches are made and sent to the devices in a thread while the step before runs; the loop
    # waits for each step to finish before taking the next batch, so the time it then waits for
    # that batch is time the devices had nothing to do (the input wait).
    batches = Prefetched(train_iterator, lambda local: sharding.global_batch(
        {k: local[k] for k in ('clips', 'labels')}, mesh))
    preemption = Preemption()
    unchecked = []  # (step, metrics on the device) whose finiteness is not yet checked
    window_start, window_steps, window_wait = time.monotonic(), 0, 0.0
    warned_input_bound = -INPUT_BOUND_WARN_EVERY_S
    metrics = None
    step = start
    try:
      while step < total_steps:
        if metrics is not None:
          jax.block_until_ready(metrics)
        batch = next(batches)
        if step == start:  # compiled here: timed apart, and left out of the ETA
          logging.info('Compiling the train step (global batch %d)...', config.data.batch_size)
          train_step, (state, metrics) = _compile_and_run_once(train_step, state, batch, rng)
          window_start = time.monotonic()
        else:
          state, metrics = train_step(state, batch, rng)
          window_steps += 1
          window_wait += batches.last_wait_s
        step += 1
        unchecked.append((step, metrics))
        stop = preemption.requested or (jax.process_count() > 1 and
                                        run_checkpoints.latest.reached_preemption(step))
        logging_step = step % config.train.log_every_steps == 0 or step == total_steps or stop
        saving = stop or step % config.train.checkpoint_every_steps == 0 or step == total_steps
        if logging_step or saving or step % eval_every == 0:
          # Never log, save or promote to best a state reached through a non-finite step.
          _check_finite(unchecked, run_checkpoints)
          unchecked = []
        if logging_step:
          jax.block_until_ready(metrics)  # the window ends when its last step has finished
          seconds = max(time.monotonic() - window_start, 1e-9)
          clips_per_s = window_steps * config.data.batch_size / seconds
          wait_fraction = window_wait / seconds
          last = jax.device_get(metrics)
          writer.write(step, {**last, 'clips_per_s': clips_per_s, 'input_wait_s': window_wait,
                              'input_wait_fraction': wait_fraction})
          if main_process:
            eta = (total_steps - step) * seconds / max(window_steps, 1)
            logging.info('step %d/%d  loss %.4f  acc %.3f  lr %.5f  %.1f clips/s  '
                         'input wait %.0f%% (%.1f s)  ETA %s', step, total_steps, last['loss'],
                         last['accuracy'], last['lr'], clips_per_s, 100 * wait_fraction,
                         window_wait, format_seconds(eta))
            if window_steps and wait_fraction > INPUT_BOUND_FRACTION:
              warned_input_bound = _warn_input_bound(warned_input_bound, wait_fraction,
                                                     window_steps, config.data.num_workers)
          window_start, window_steps, window_wait = time.monotonic(), 0, 0.0
        if saving:
          run_checkpoints.save(step, state, batches, config=config, force=True)
        if stop:
          run_checkpoints.wait()
          logging.warning('Stopped at step %d on request; the same command resumes.', step)
          return {}
        if step % eval_every == 0 and step != total_steps:
          results = evaluation.evaluate_views(config, eval_step, train_state.variables_of(state),
                                              mesh=mesh, views=config.eval.views,
                                              class_names=class_names, step=step)
          _record_eval(writer, run_checkpoints, step, state=state, config=config, results=results,
                       main_process=main_process)
          window_start, window_steps, window_wait = time.monotonic(), 0, 0.0
    finally:
      preemption.restore()
      batches.close()

    # Final evaluation, with every requested set of views.
    final = {}
    for views in config.eval.final_views.split(','):
      results = evaluation.evaluate_views(config, eval_step, train_state.variables_of(state),
                                          mesh=mesh, views=views, class_names=class_names,
                                          workdir=workdir, name=f'final_{views}', step=step)
      final[views] = results
      if views == config.eval.views:
        _record_eval(writer, run_checkpoints, step, state=state, config=config, results=results,
                     main_process=main_process)
      if main_process:
        logging.info('final %s', evaluation.summary_line(results))
    run_checkpoints.wait()
    run_checkpoints.close()
    if main_process:
      plots.training_curves(read_metrics(workdir), workdir / 'training_curves.png')
      (workdir / 'final_metrics.json').write_text(json.dumps(
          {v: _scalars(r) for v, r in final.items()}, indent=1))
    return final
  finally:
    writer.close()


def _warn_input_bound(last_warned: float, wait_fraction: float, window_steps: int,
                      num_workers: int) -> float:
  """Warns that the run is input-bound, naming the setting to raise, unless it warned in the
  last `INPUT_BOUND_WARN_EVERY_S`; returns when it last warned."""
  now = time.monotonic()
  if now - last_warned < INPUT_BOUND_WARN_EVERY_S:
    return last_warned
  logging.warning('input-bound: the devices waited for data %.0f%% of the last %d steps with %d '
                  'loader processes; raise --config.data.num_workers (cores: %d) or prepare the '
                  'data on a faster local disk', 100 * wait_fraction, window_steps, num_workers,
                  workers.usable_cores())
  return now


def _check_writable(workdir) -> None:
  """Creates `workdir` and writes a file in it, or says in one line why it cannot."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / '.write_check'
    probe.write_text('')
    probe.unlink()
  except OSError as error:
    raise UserError(f'{workdir}: the workdir cannot be written ({error.strerror or error}); '
                    'give a --workdir you can create and write to') from error


def _compile_and_run_once(step, state, batch, rng):
  """(the executable of `step`, a `steps.MeshStep`, for these arguments; its first run's
  (state, metrics)), after logging how long tracing, compiling (or loading from the compilation
  cache) and that run took."""
  start = time.monotonic()
  with compile_cache.CompileCounter() as counted:
    lowered = step.lower(state, batch, rng)
    traced = time.monotonic()
    executable = lowered.compile()
  compiled = time.monotonic()
  first_result = jax.block_until_ready(executable(state, batch, rng))
  done = time.monotonic()
  logging.info('Compiled the train step and ran it once in %.1f s (%s; tracing %.1f s, '
               'compiling %.1f s, first step %.1f s)', done - start, counted.describe(),
               traced - start, compiled - traced, done - compiled)
  return executable, first_result


def _scalars(results: dict) -> dict:
  return {k: results[k] for k in ('top1', 'top5', 'mean_class_accuracy', 'examples', 'step',
                                  'views')}


def _check_finite(unchecked, run_checkpoints) -> None:
  """Raises if the loss or the gradient norm of a step not yet checked is not finite (the
  update of such a step makes the weights non-finite), naming the last checkpoint."""
  for step, metrics in unchecked:
    loss, grad_norm = (float(metrics[k]) for k in ('loss', 'grad_norm'))
    if not (np.isfinite(loss) and np.isfinite(grad_norm)):
      run_checkpoints.wait()  # the last complete checkpoint, not one still being written
      last = run_checkpoints.latest.latest_step()
      resume = (f'the last checkpoint is step {last}' if last is not None
                else 'there is no checkpoint yet')
      raise NonFiniteLoss(
          f'loss is {loss} at step {step} (gradient norm {grad_norm}); stopping, nothing saved '
          f'after it: {resume}. Lower optim.base_lr or check the data, then run the same '
          'command to resume.')


def _record_eval(writer, run_checkpoints, step, *, state, config, results, main_process):
  writer.write(step, {'val_top1': results['top1'], 'val_top5': results['top5'],
                      'val_mean_class_accuracy': results['mean_class_accuracy']})
  improved = run_checkpoints.save_best(step, state, config, _scalars(results))
  if main_process:
    logging.info('eval at step %d: %s%s', step, evaluation.summary_line(results),
                 '  (best so far)' if improved else '')
