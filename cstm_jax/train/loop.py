"""Training: `train_and_evaluate(config, workdir, class_names=...)` trains (resuming where a run
stopped) and evaluates the result.

Reads top to bottom: where a run starts (resume, init_from or scratch), then the loop: data, the
program (`program.build`: model, optimizer, state layout, steps), the state, and the loop that
logs, saves and evaluates. The pieces live beside it: `program`, `train_state`, `evaluation`,
`checkpoints`, `throughput`.
"""
import json
import threading
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from cstm_foundation import paths, stopping
from cstm_foundation.errors import UserError
from cstm_foundation.progress import format_seconds
from cstm_jax.config import finish
from cstm_jax.distributed import compile_cache, sharding, stops, workdir_lock
from cstm_jax.train import (checkpoints, evaluation, plots, pretrained, program as program_lib,
                            throughput)
from cstm_jax.train.train_state import variables_of
from cstm_jax.train.writer import MetricWriter, read_metrics
from input_pipeline import pipeline, worker_pools
from input_pipeline.prefetch import Prefetched


class NonFiniteLoss(UserError, FloatingPointError):
  """Training diverged; nothing reached through the diverging step was saved."""


# --- Where a run starts -------------------------------------------------------------------------

class Start(NamedTuple):
  state: Any  # the train state, restored or fresh
  step: int  # the first step to run


def initial_state(program, *, run_checkpoints, train_iterator) -> Start:
  """Resume > init_from > scratch."""
  config = program.config
  restored, step = run_checkpoints.restore_latest(program.abstract_state, train_iterator, config)
  if restored is not None:
    logging.info('Resuming from the checkpoint of step %d', step)
    return Start(restored, step)
  init_from = config.train.init_from
  if pretrained.is_scratch(init_from):
    backbone = config.model.backbone
    if backbone in pretrained.FROM_SCRATCH:
      logging.info('train.init_from=scratch: %s', pretrained.FROM_SCRATCH[backbone])
    else:
      logging.warning('train.init_from=scratch: the backbone starts from random weights (the '
                      "papers' numbers start from ImageNet weights: --config.train.init_from="
                      'imagenet)')
    return Start(program.init_state(jax.random.key(config.train.seed)), 0)
  # The weights first: a run that cannot get them stops before its first compile.
  if init_from in pretrained.STARTS:
    weights = pretrained.starting_variables(init_from, config.model)
    source = (f'the {pretrained.STARTS[init_from]} weights '
              f'{pretrained.weights_for(init_from, config.model).file}')
  else:
    weights, source = checkpoints.load_variables(init_from), init_from
  state = program.init_state(jax.random.key(config.train.seed))
  merged, _ = checkpoints.merge_pretrained(variables_of(state), weights,
                                           config.train.init_partial, source)
  shardings = program.state_shardings
  merged = jax.device_put(merged, {'params': shardings.params,
                                   'batch_stats': shardings.batch_stats})
  logging.info('Initialised from %s', source)
  return Start(state.replace(params=merged['params'], batch_stats=merged['batch_stats']), 0)


# --- Training loop ----------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, mesh=None,
                       class_names) -> dict:
  """Trains `config` (finished: `config.finish.for_data`, which gives `class_names`) in
  `workdir`, resuming if it holds a checkpoint, and evaluates the result, holding the workdir's
  lock (`workdir_lock`: one run per workdir). `mesh`: default `program.make_mesh(config)`.

  Returns the final evaluation results of each of `config.eval.final_views`.
  """
  finish.require(config)
  workdir = paths.resolve(workdir)
  mesh = mesh or program_lib.make_mesh(config)
  main_process = jax.process_index() == 0
  if main_process:
    _check_writable(workdir)
  with workdir_lock.WorkdirLock(workdir, active=main_process):
    return _train_and_evaluate(config, workdir, mesh, class_names, main_process)


def _train_and_evaluate(config, workdir, mesh, class_names, main_process) -> dict:
  logging.info('Opening the dataset and building %s/%s on %d devices', config.model.temporal,
               config.model.backbone, jax.device_count())

  # Data.
  train_data = pipeline.train_dataset(config.data, jax.process_index(), jax.process_count())
  train_size = len(pipeline.open_split(config.data, config.data.train_split)[0])
  # A step trains on one batch; with gradient accumulation an optimizer step takes several.
  steps_per_epoch = program_lib.optimizer_steps_per_epoch(config, train_size)
  accumulated = config.optim.grad_accum_steps
  total_steps = int(config.optim.epochs * steps_per_epoch) * accumulated
  if config.train.max_steps > 0:
    total_steps = min(total_steps, config.train.max_steps)
  eval_every = max(1, int(config.train.eval_every_epochs * steps_per_epoch * accumulated))

  # The program: model, optimizer, state layout and steps.
  program = program_lib.build(config, mesh, steps_per_epoch=steps_per_epoch)

  # State, restored or fresh.
  run_checkpoints = checkpoints.RunCheckpoints(workdir, config.train.keep_checkpoints)
  train_iterator = iter(train_data)
  state, start = initial_state(program, run_checkpoints=run_checkpoints,
                               train_iterator=train_iterator)
  train_step = program.train_step
  rng = jax.random.key(config.train.seed + 1)
  writer = MetricWriter(workdir, start)
  # Closed however the run ends: tensorboardX's own exit hook would start a thread while the
  # interpreter shuts down, which Python 3.12 refuses with a traceback.
  try:
    if main_process:
      (workdir / 'config.json').write_text(config.to_json(indent=1))
      (workdir / 'classes.json').write_text(json.dumps(list(class_names), indent=0))  # predict
      logging.info('Training %s/%s on %d devices (%d processes): %d videos, %d steps of %d clips '
                   '(%d per epoch%s), starting at step %d; %d loader processes',
                   config.model.temporal, config.model.backbone, jax.device_count(),
                   jax.process_count(), train_size, total_steps, config.data.batch_size,
                   steps_per_epoch * accumulated,
                   f'; the optimizer updates after every {accumulated}' if accumulated > 1 else '',
                   start, config.data.num_workers)

    def evaluate(views, **where):
      return evaluation.evaluate_views(config, program.eval_step, variables_of(state), mesh=mesh,
                                       views=views, class_names=class_names, step=step, **where)

    # Batches are made and sent to the devices in a thread while the step before runs; the loop
    # waits for each step to finish before taking the next batch, so the time it then waits for
    # that batch is time the devices had nothing to do (the input wait).
    batches = Prefetched(train_iterator, lambda local: sharding.global_batch(
        {k: local[k] for k in ('clips', 'labels')}, mesh))
    unchecked = []  # (step, metrics on the device) whose finiteness is not yet checked
    window = throughput.Window(config.data.batch_size)
    metrics = None
    step = saved = start
    evaluating = False  # a stop then abandons the evaluation of `step`
    vote = stops.StepVote(mesh)

    def evaluate_during_training():
      nonlocal evaluating
      evaluating = True
      _record_eval(writer, run_checkpoints, step, state=state, config=config,
                   results=evaluate(config.eval.views), main_process=main_process)
      evaluating = False

    # A stop request (SIGTERM, Ctrl-C: `stopping`) is honoured at the next step or evaluation
    # batch, at the same point in every process (`stops`): the state of the last completed step
    # is saved, an evaluation under way is abandoned (the rerun evaluates again).
    try:
      if _eval_pending(writer, start, eval_every, total_steps):
        logging.info('Evaluating step %d first: a stop came before its evaluation ended', start)
        evaluate_during_training()
      while step < total_steps:
        if metrics is not None:
          jax.block_until_ready(metrics)
        batch = next(batches)
        if step == start:  # compiled here: timed apart, and left out of the ETA
          logging.info('Compiling the train step (global batch %d)...', config.data.batch_size)
          train_step, (state, metrics) = _compile_and_run_once(train_step, state, batch, rng,
                                                               before_step=step + 1)
          window.restart()
        else:
          state, metrics = train_step(state, batch, rng)
          window.add_step(batches.last_wait_s)
        step += 1
        unchecked.append((step, metrics))
        stop = vote.after_step()
        logging_step = step % config.train.log_every_steps == 0 or step == total_steps or stop
        saving = stop or step % config.train.checkpoint_every_steps == 0 or step == total_steps
        if logging_step or saving or step % eval_every == 0:
          # Never log, save or promote to best a state reached through a non-finite step.
          _check_finite(unchecked, run_checkpoints)
          unchecked = []
        if logging_step:
          jax.block_until_ready(metrics)  # the window ends when its last step has finished
          figures = window.close()
          last = jax.device_get(metrics)
          writer.write(step, {**last, **{k: figures[k] for k in (
              'clips_per_s', 'input_wait_s', 'input_wait_fraction')}})
          if main_process:
            logging.info('step %d/%d  loss %.4f  acc %.3f  lr %.5f  %.1f clips/s  '
                         'input wait %.0f%% (%.1f s)  ETA %s', step, total_steps, last['loss'],
                         last['accuracy'], last['lr'], figures['clips_per_s'],
                         100 * figures['input_wait_fraction'], figures['input_wait_s'],
                         format_seconds((total_steps - step) * figures['seconds_per_step']))
            window.warn_if_input_bound(figures, config.data.num_workers)
        if saving:
          run_checkpoints.save(step, state, batches, config=config, force=True)
          saved = step
        if stop:
          stopping.check(f'at step {step}')
        if step % eval_every == 0 and step != total_steps:
          evaluate_during_training()
          window.restart()
    except (stopping.Stopped, worker_pools.WorkerDied) as error:
      if getattr(error, 'abandons_threads', False):  # nothing to save: stop at once
        raise
      if step > saved:  # the last completed step, unless it went non-finite
        _check_finite(unchecked, run_checkpoints)
        run_checkpoints.save(step, state, batches, config=config, force=True)
      run_checkpoints.wait()
      if isinstance(error, worker_pools.WorkerDied) or (step == start and not evaluating):
        raise  # no step done here: its own line says where (the compile, the loader)
      where = (f'at step {step} during its evaluation (abandoned; the rerun evaluates it again)'
               if evaluating else f'at step {step}')
      raise stopping.Stopped(stopping.message(where)) from None
    finally:
      batches.close()

    # Final evaluation, with every requested set of views; a stop abandons it (the checkpoint
    # of the last step is saved: the rerun evaluates again).
    final = {}
    try:
      for views in config.eval.final_views.split(','):
        results = final[views] = evaluate(views, workdir=workdir, name=f'final_{views}')
        if views == config.eval.views:
          _record_eval(writer, run_checkpoints, step, state=state, config=config,
                       results=results, main_process=main_process)
        if main_process:
          logging.info('final %s', evaluation.summary_line(results))
        if stops.agreed():  # a stop while process 0 wrote the results and plots
          stopping.check('during the final evaluation')
      run_checkpoints.wait()
      run_checkpoints.close()
      if main_process:
        plots.training_curves(read_metrics(workdir), workdir / 'training_curves.png')
        stopping.check('during the final evaluation')
        (workdir / 'final_metrics.json').write_text(json.dumps(
            {v: _scalars(r) for v, r in final.items()}, indent=1))
    except stopping.Stopped:
      run_checkpoints.wait()
      raise stopping.Stopped(stopping.message(
          f'at step {step} during the final evaluation (abandoned; the rerun evaluates again)')
      ) from None
    return final
  finally:
    writer.close()


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


def _compile_and_run_once(step, state, batch, rng, *, before_step: int):
  """(the executable of `step`, a `steps.MeshStep`, for these arguments; its first run's
  (state, metrics)), after logging how long tracing, compiling (or loading from the compilation
  cache) and that run took.

  It compiles in a thread, so that a stop request ends a single-process run at once (the thread
  is abandoned: `Stopped.abandons_threads`); the processes of a job all compile, then agree
  whether to stop before their first step."""
  times, result = {'start': time.monotonic()}, {}

  def work():
    try:
      with compile_cache.CompileCounter() as counted:
        lowered = step.lower(state, batch, rng)
        times['traced'] = time.monotonic()
        result['executable'] = lowered.compile()
      result['counted'] = counted.describe()
    except BaseException as error:  # raised again in the main thread
      result['error'] = error

  thread = threading.Thread(target=work, name='compile-train-step', daemon=True)
  thread.start()
  if jax.process_count() > 1:
    thread.join()
  elif not stopping.wait_while(thread.is_alive):
    raise stopping.Stopped(stopping.message(f'while compiling the train step (before step '
                                            f'{before_step})'), abandons_threads=True)
  if 'error' in result:
    raise result['error']
  if stops.agreed():
    stopping.check(f'after compiling the train step (before step {before_step})')
  executable, compiled = result['executable'], time.monotonic()
  first_result = jax.block_until_ready(executable(state, batch, rng))
  done = time.monotonic()
  logging.info('Compiled the train step and ran it once in %.1f s (%s; tracing %.1f s, '
               'compiling %.1f s, first step %.1f s)', done - times['start'], result['counted'],
               times['traced'] - times['start'], compiled - times['traced'], done - compiled)
  return executable, first_result


def _eval_pending(writer, start: int, eval_every: int, total_steps: int) -> bool:
  """Whether a run resumed at `start` owes the evaluation of that step: a stop abandoned it, or
  came just before it. Read from process 0's metrics.jsonl; the same answer in every process."""
  due = 0 < start < total_steps and start % eval_every == 0
  if due and jax.process_index() == 0:
    due = not writer.has(start, 'val_top1')
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    due = bool(multihost_utils.broadcast_one_to_all(np.array(due, np.int32)))
  return due


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
      last = run_checkpoints.latest_step()
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
