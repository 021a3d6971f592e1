"""Training and evaluation: `train_and_evaluate(config, workdir)` and `evaluate(config, workdir)`.

Reads top to bottom: setup (processes, mesh), data, model and optimizer, state and its
shardings, step functions, restore, evaluation, and the training loop.
"""
import copy
import json
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from cstm_jax import checkpoints, evaluate as evaluation, optim, paths, sharding
from cstm_jax.models.build import build_model
from input_pipeline.progress import format_seconds
from cstm_jax.writer import MetricWriter, read_metrics
from input_pipeline.errors import ConfigError, UserError


class TrainState(train_state.TrainState):
  batch_stats: Any


class NonFiniteLoss(UserError, FloatingPointError):
  """Training diverged; nothing reached through the diverging step was saved."""


# --- Setup ------------------------------------------------------------------------------------

def setup_mesh(config) -> jax.sharding.Mesh:
  mesh = sharding.make_mesh(config.mesh.model)
  sharding.check_batch(config.data.batch_size, mesh)
  sharding.check_batch(config.data.eval_batch_size, mesh, 'evaluation batch')
  return mesh


# --- Data -------------------------------------------------------------------------------------

def data_config_with_views(config, views: str) -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.eval_clips, data.eval_crops = evaluation.parse_views(views)
  return data


def with_dataset_classes(config, class_names) -> ml_collections.ConfigDict:
  """`config` with `model.num_classes` taken from the dataset when it is 0; a different
  non-zero count is refused (it would train into NaN, or evaluate classes with no data)."""
  count = config.model.num_classes
  if count == 0:
    config = copy.deepcopy(config)
    with config.unlocked():
      config.model.num_classes = len(class_names)
    return config
  if count != len(class_names):
    raise ConfigError(
        f'model.num_classes is {count} but the dataset {config.data.name} in '
        f'{config.data.data_dir} has {len(class_names)} '
        f'classes: set --config.model.num_classes={len(class_names)} (or 0 to take the '
        "dataset's count)")
  return config


# --- Model, optimizer, state ------------------------------------------------------------------

def model_and_optimizer(config, steps_per_epoch: int):
  """(model, lr schedule, optimizer, shape of a global training batch of clips)."""
  model = build_model(config.model)
  schedule = optim.learning_rate_schedule(config.optim, config.data.batch_size, steps_per_epoch)
  clips_shape = (config.data.batch_size, config.data.num_frames, config.data.crop,
                 config.data.crop, 3)
  abstract_params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *clips_shape[1:]), jnp.float32)))[
          'params']
  return model, schedule, optim.make_optimizer(config.optim, schedule, abstract_params), clips_shape


def _init_fn(model, tx, clips_shape):
  def init(rng):
    # One clip is enough: no variable's shape depends on the batch.
    variables = model.init({'params': rng}, jnp.zeros((1, *clips_shape[1:]), jnp.float32))
    return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                             batch_stats=variables['batch_stats'])

  return init


def state_layout(model, tx, clips_shape, mesh, threshold=2 ** 20):
  """(abstract state whose leaves carry their shardings, the shardings)."""
  abstract = jax.eval_shape(_init_fn(model, tx, clips_shape), jax.random.key(0))
  shardings = sharding.state_shardings(abstract, mesh, threshold)
  with_shardings = jax.tree_util.tree_map(
      lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
      abstract, shardings)
  return with_shardings, shardings


def create_train_state(model, tx, clips_shape, mesh, rng, threshold=2 ** 20):
  """The initial state, created directly with its shardings (nothing built on one device)."""
  _, shardings = state_layout(model, tx, clips_shape, mesh, threshold)
  return jax.jit(_init_fn(model, tx, clips_shape), out_shardings=shardings)(rng), shardings


# --- Step functions ---------------------------------------------------------------------------

def make_train_step(model, schedule, grad_accum_steps: int = 1):
  """(state, batch, rng) -> (state, metrics); dropout rng folded in per step."""

  def step(state, batch, rng):
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, batch['clips'], train=True,
          mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels']).mean()
      return loss, (logits, updates['batch_stats'])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['labels']),
        'grad_norm': optim.global_norm(grads),
        'lr': optim.current_learning_rate(schedule, state.step - 1, grad_accum_steps),
    }
    return state, metrics

  return step


def jit_train_step(step, state_shardings, mesh, gpu_conv_nhwc: bool = False):
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
                 out_shardings=(state_shardings, replicated), donate_argnums=0,
                 compiler_options=sharding.compiler_options(mesh, gpu_conv_nhwc))


def jit_eval_step(model, mesh, gpu_conv_nhwc: bool = False):
  """`evaluate.make_eval_step(model)` jitted for `mesh` (shardings follow the arguments)."""
  return jax.jit(evaluation.make_eval_step(model),
                 compiler_options=sharding.compiler_options(mesh, gpu_conv_nhwc))


# --- Evaluation -------------------------------------------------------------------------------

def evaluate_views(config, eval_step, variables, mesh, views: str, class_names, workdir=None,
                   name=None, step=None) -> dict:
  """Metrics of `variables` on the evaluation split with `views`; writes results and plots
  into `workdir/eval` when given. `eval_step` is the jitted `evaluate.make_eval_step`."""
  from input_pipeline import pipeline
  data = data_config_with_views(config, views)
  dataset, _ = pipeline.eval_dataset(data, jax.process_index(), jax.process_count())
  outputs = evaluation.run(eval_step, variables, dataset, mesh, config.eval.tsne_examples)
  results = evaluation.metrics(outputs['logits'], outputs['labels'], config.model.num_classes)
  results.update({'views': views, 'step': step})
  if workdir is not None and jax.process_index() == 0:
    evaluation.write_results(paths.resolve(workdir) / 'eval', name or f'views_{views}', results,
                             class_names, outputs['features'], outputs['labels'])
  return results


def summary_line(results: dict) -> str:
  return (f"{results['views']} views: top-1 {results['top1']:.2f}  top-5 {results['top5']:.2f}  "
          f"mean class {results['mean_class_accuracy']:.2f}  ({results['examples']} clips)")


# --- Restore ----------------------------------------------------------------------------------

def initial_state(config, model, tx, mesh, clips_shape, run_checkpoints, train_iterator):
  """Resume > init_from > scratch. Returns (state, state shardings, first step)."""
  rng = jax.random.key(config.train.seed)
  state, shardings = create_train_state(model, tx, clips_shape, mesh, rng,
                                        config.mesh.shard_threshold)
  abstract, _ = state_layout(model, tx, clips_shape, mesh, config.mesh.shard_threshold)
  restored, step = run_checkpoints.restore_latest(abstract, train_iterator, config)
  if restored is not None:
    logging.info('Resuming from the checkpoint of step %d', step)
    return restored, shardings, step
  if config.train.init_from:
    pretrained = checkpoints.load_variables(config.train.init_from)
    merged, _ = checkpoints.merge_pretrained(
        {'params': state.params, 'batch_stats': state.batch_stats}, pretrained,
        config.train.init_partial, config.train.init_from)
    merged = jax.device_put(merged, {'params': shardings.params,
                                     'batch_stats': shardings.batch_stats})
    state = state.replace(params=merged['params'], batch_stats=merged['batch_stats'])
    logging.info('Initialised from %s', config.train.init_from)
  return state, shardings, 0


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
  """Trains `config` in `workdir` (resuming if it holds a checkpoint) and evaluates the result.

  Returns the final evaluation results of each of `config.eval.final_views`.
  """
  from input_pipeline import pipeline
  workdir = paths.resolve(workdir)
  mesh = setup_mesh(config)
  main_process = jax.process_index() == 0
  if main_process:
    workdir.mkdir(parents=True, exist_ok=True)

  # Data.
  train_data = pipeline.train_dataset(config.data, jax.process_index(), jax.process_count())
  train_source, class_names = pipeline.open_split(config.data, config.data.train_split)
  config = with_dataset_classes(config, class_names)
  train_size = len(train_source)
  steps_per_epoch = max(1, train_size // config.data.batch_size)
  optimizer_steps = int(config.optim.epochs * steps_per_epoch)
  total_steps = optimizer_steps * config.optim.grad_accum_steps
  if config.train.max_steps > 0:
    total_steps = min(total_steps, config.train.max_steps)
  eval_every = max(1, int(config.train.eval_every_epochs * steps_per_epoch
                          * config.optim.grad_accum_steps))

  # Model and optimizer.
  model, schedule, tx, clips_shape = model_and_optimizer(config, steps_per_epoch)

  # State, restored or fresh.
  run_checkpoints = checkpoints.RunCheckpoints(workdir, config.train.keep_checkpoints)
  train_iterator = iter(train_data)
  state, shardings, start = initial_state(config, model, tx, mesh, clips_shape, run_checkpoints,
                                          train_iterator)
  train_step = sharding.with_mesh(jit_train_step(
      make_train_step(model, schedule, config.optim.grad_accum_steps), shardings, mesh,
      config.xla.gpu_conv_nhwc), mesh)
  eval_step = sharding.with_mesh(jit_eval_step(model, mesh, config.xla.gpu_conv_nhwc), mesh)
  rng = jax.random.key(config.train.seed + 1)
  writer = MetricWriter(workdir, start)
  if main_process:
    (workdir / 'config.json').write_text(config.to_json(indent=1))
    (workdir / 'classes.json').write_text(json.dumps(list(class_names), indent=0))  # predict
    logging.info('Training %s/%s on %d devices (%d processes): %d videos, %d steps of %d clips '
                 '(%d per epoch), starting at step %d', config.model.temporal,
                 config.model.backbone, jax.device_count(), jax.process_count(), train_size,
                 total_steps, config.data.batch_size, steps_per_epoch, start)

  preemption = Preemption()
  unchecked = []  # (step, metrics on the device) whose finiteness is not yet checked
  window_start, window_steps = time.monotonic(), 0
  step = start
  try:
    while step < total_steps:
      batch = sharding.global_batch(next(train_iterator), mesh)
      state, metrics = train_step(state, batch, rng)
      step += 1
      window_steps += 1
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
        seconds = time.monotonic() - window_start
        clips_per_s = window_steps * config.data.batch_size / max(seconds, 1e-9)
        last = jax.device_get(metrics)
        writer.write(step, {**last, 'clips_per_s': clips_per_s})
        if main_process:
          eta = (total_steps - step) * seconds / max(window_steps, 1)
          logging.info('step %d/%d  loss %.4f  acc %.3f  lr %.5f  %.1f clips/s  ETA %s', step,
                       total_steps, last['loss'], last['accuracy'], last['lr'], clips_per_s,
                       format_seconds(eta))
        window_start, window_steps = time.monotonic(), 0
      if saving:
        run_checkpoints.save(step, state, train_iterator, config, force=True)
      if stop:
        run_checkpoints.wait()
        logging.warning('Stopped at step %d on request; the same command resumes.', step)
        return {}
      if step % eval_every == 0 and step != total_steps:
        results = evaluate_views(config, eval_step, variables_of(state), mesh, config.eval.views,
                                 class_names, step=step)
        _record_eval(writer, run_checkpoints, step, state, config, results, main_process)
        window_start = time.monotonic()
  finally:
    preemption.restore()

  # Final evaluation, with every requested set of views.
  final = {}
  for views in config.eval.final_views.split(','):
    results = evaluate_views(config, eval_step, variables_of(state), mesh, views, class_names,
                             workdir, f'final_{views}', step)
    final[views] = results
    if views == config.eval.views:
      _record_eval(writer, run_checkpoints, step, state, config, results, main_process)
    if main_process:
      logging.info('final %s', summary_line(results))
  run_checkpoints.wait()
  run_checkpoints.close()
  if main_process:
    from cstm_jax import plots
    plots.training_curves(read_metrics(workdir), workdir / 'training_curves.png')
    (workdir / 'final_metrics.json').write_text(json.dumps(
        {v: _scalars(r) for v, r in final.items()}, indent=1))
  writer.close()
  return final


def variables_of(state):
  return {'params': state.params, 'batch_stats': state.batch_stats}


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


def _record_eval(writer, run_checkpoints, step, state, config, results, main_process):
  writer.write(step, {'val_top1': results['top1'], 'val_top5': results['top5'],
                      'val_mean_class_accuracy': results['mean_class_accuracy']})
  improved = run_checkpoints.save_best(step, state, config, _scalars(results))
  if main_process:
    logging.info('eval at step %d: %s%s', step, summary_line(results),
                 '  (best so far)' if improved else '')


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the `config.eval.checkpoint` ('latest' or 'best') checkpoint of `workdir` with
  each of `config.eval.final_views`, without training."""
  from input_pipeline import pipeline
  mesh = setup_mesh(config)
  _, class_names = pipeline.open_split(config.data, config.data.eval_split)
  config = with_dataset_classes(config, class_names)
  model, variables, step = restore_variables(config, workdir, config.eval.checkpoint, mesh)
  eval_step = sharding.with_mesh(jit_eval_step(model, mesh, config.xla.gpu_conv_nhwc), mesh)
  results = {}
  for views in config.eval.final_views.split(','):
    results[views] = evaluate_views(config, eval_step, variables, mesh, views,
                                    class_names, workdir, f'{config.eval.checkpoint}_{views}', step)
    if jax.process_index() == 0:
      logging.info('%s checkpoint (step %d): %s', config.eval.checkpoint, step,
                   summary_line(results[views]))
  return results


def restore_variables(config, workdir, which: str, mesh):
  """(model, {'params', 'batch_stats'}, step) of the run's 'best' or 'latest' checkpoint."""
  model, _, tx, clips_shape = model_and_optimizer(config, steps_per_epoch=1)
  abstract, _ = state_layout(model, tx, clips_shape, mesh, config.mesh.shard_threshold)
  run_checkpoints = checkpoints.RunCheckpoints(workdir)
  try:
    state, step = run_checkpoints.restore_state(which, abstract, config)
  finally:
    run_checkpoints.close()
  return model, variables_of(state), step
