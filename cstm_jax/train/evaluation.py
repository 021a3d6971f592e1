"""Evaluation over a whole split: logits averaged over views, exact top-1 / top-5 / mean class
accuracy (padding masked out), per-class accuracy, confusion matrix and clip features; and
`evaluate_checkpoint`, main.py's mode=eval.
"""
import json

import jax
import ml_collections
import numpy as np
from absl import logging

from cstm_foundation import paths, stopping
from cstm_foundation.errors import ConfigError
from cstm_foundation.progress import Progress
from cstm_jax.config import finish
from cstm_jax.distributed import sharding, stops
from cstm_jax.train import program as program_lib, train_state
from input_pipeline import pipeline, worker_pools


def parse_views(views: str) -> tuple[int, int, bool]:
  """The test protocol `views` names: 'CLIPSxCROPS', with 1 or 2 clips (segment centres, and
  starts) and 1 (centre), 3 (along the long side), 5 (corners and centre) or 10 (those and their
  mirrors) crops of the training crop, or of the test scale with the suffix 'full' (TSM's full
  resolution). '1x1' -> (1, 1, False); '2x3full' -> (2, 3, True)."""
  spec = views[:-len('full')] if views.endswith('full') else views
  try:
    clips, crops = (int(v) for v in spec.split('x'))
  except ValueError:
    raise ConfigError(f"views {views!r} is not 'CLIPSxCROPS' such as '1x1', '2x3' or "
                      "'2x3full'") from None
  if clips not in (1, 2) or crops not in (1, 3, 5, 10):
    raise ConfigError(f'views {views!r}: clips must be 1 or 2 and crops 1, 3, 5 or 10')
  return clips, crops, views.endswith('full')


def run(eval_step, variables, dataset, *, mesh, max_features: int = 2000, batches: int = 0,
        label: str = 'evaluation') -> dict:
  """Runs `eval_step` (a `program.Program`'s) over every batch of `dataset`; returns host
  arrays of the valid examples: logits, labels and the features of the first `max_features`.
  With `batches` (per process), process 0 shows the progress."""
  logits, labels, features = [], [], []
  kept = 0
  iterator = iter(dataset)
  loaded = worker_pools.loaded(iterator)
  try:
    with Progress(batches, 'batches', label,
                  enabled=batches > 0 and jax.process_index() == 0) as bar:
      for local in loaded:
        if stops.agreed():  # the evaluation is abandoned
          raise stopping.Stopped(stopping.message(f'during the {label} (abandoned)', lost=True,
                                                  resumes='the same command runs it again'),
                                 lost=True)
        batch = sharding.global_batch({k: local[k] for k in ('clips', 'labels', 'mask')}, mesh)
        batch_logits, batch_features = eval_step(variables, batch)
        mask = sharding.to_host(batch['mask']) > 0
        logits.append(sharding.to_host(batch_logits)[mask])
        labels.append(sharding.to_host(batch['labels'])[mask])
        if kept < max_features:
          features.append(sharding.to_host(batch_features)[mask])
          kept += int(mask.sum())
        bar.update()
  finally:
    loaded.close()
    if hasattr(iterator, 'close'):  # its worker processes free their shared memory now
      iterator.close()
  return {'logits': np.concatenate(logits), 'labels': np.concatenate(labels),
          'features': np.concatenate(features)[:max_features] if features else None}


def metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
  """Top-1, top-5, mean class accuracy (%), per-class accuracy and the confusion matrix."""
  predictions = logits.argmax(axis=1)
  top5 = np.argsort(-logits, axis=1)[:, :5]
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  support = confusion.sum(axis=1)
  per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
  return {
      'examples': int(len(labels)),
      'top1': float(100 * np.mean(predictions == labels)),
      'top5': float(100 * np.mean((top5 == labels[:, None]).any(axis=1))),
      'mean_class_accuracy': float(100 * np.nanmean(per_class)),
      'per_class_top1': [None if np.isnan(a) else float(100 * a) for a in per_class],
      'support': support.tolist(),
      'confusion': confusion,
  }


def write_results(directory, name: str, results: dict, *, class_names, features=None, labels=None):
  """Writes `<name>.json` (metrics, per-class accuracy, class names), the confusion-matrix PNG
  and the t-SNE PNG of clip features into `directory`; returns the JSON path."""
  from cstm_jax.train import plots  # matplotlib only where results are written
  directory = paths.resolve(directory)
  summary = {**results, 'confusion': np.asarray(results['confusion']).tolist(),
             'class_names': list(class_names)}
  path = directory / f'{name}.json'
  paths.write_text(path, json.dumps(summary, indent=1))
  plots.confusion_matrix(results['confusion'], class_names, directory / f'{name}_confusion.png',
                         title=f"{name}: top-1 {results['top1']:.1f}%")
  if features is not None and len(features) >= 4:
    # `run` keeps the features of the first `max_features` clips only.
    plots.tsne(features, labels[:len(features)], class_names, path=directory / f'{name}_tsne.png')
  return path


def evaluate_views(config, eval_step, variables, *, mesh, views: str, class_names, workdir=None,
                   name=None, step=None) -> dict:
  """Metrics of `variables` on the evaluation split with `views`; writes results and plots
  into `workdir/eval` when given. `eval_step` is a `program.Program`'s."""
  dataset, batches = pipeline.eval_dataset(config.data, jax.process_index(), jax.process_count(),
                                           views=parse_views(views))
  outputs = run(eval_step, variables, dataset, mesh=mesh, max_features=config.eval.tsne_examples,
                batches=batches, label=f'evaluation {views}')
  results = metrics(outputs['logits'], outputs['labels'], config.model.num_classes)
  results.update({'views': views, 'step': step})
  if workdir is not None and jax.process_index() == 0:
    write_results(
        paths.resolve(workdir) / 'eval', name or f'views_{views}', results, class_names=class_names,
        features=outputs['features'], labels=outputs['labels'])
  return results


def summary_line(results: dict) -> str:
  return (f"{results['views']} views: top-1 {results['top1']:.2f}  top-5 {results['top5']:.2f}  "
          f"mean class {results['mean_class_accuracy']:.2f}  ({results['examples']} clips)")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir, *, mesh=None,
                        class_names) -> dict:
  """Evaluates the `config.eval.checkpoint` ('latest' or 'best') checkpoint of `workdir` with
  each of `config.eval.final_views`, without training. `config` is finished
  (`config.finish.for_data`, which gives `class_names`); `mesh`: default
  `program.make_mesh(config)`."""
  program = program_lib.build(finish.require(config), mesh or program_lib.make_mesh(config))
  variables, step = train_state.restore_variables(program, workdir, config.eval.checkpoint)
  results = {}
  for views in config.eval.final_views.split(','):
    results[views] = evaluate_views(config, program.eval_step, variables, mesh=program.mesh,
                                    views=views, class_names=class_names, workdir=workdir,
                                    name=f'{config.eval.checkpoint}_{views}', step=step)
    if jax.process_index() == 0:
      logging.info('%s checkpoint (step %d): %s', config.eval.checkpoint, step,
                   summary_line(results[views]))
  return results
