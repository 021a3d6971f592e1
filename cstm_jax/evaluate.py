"""Evaluation over a whole split: logits averaged over views, exact top-1 / top-5 / mean class
accuracy (padding masked out), per-class accuracy, confusion matrix and clip features."""
import json

import numpy as np

from cstm_jax import paths, sharding
from input_pipeline.errors import ConfigError


def parse_views(views: str) -> tuple[int, int]:
  """'1x1' -> (1 clip, 1 crop); '2x3' -> (2 clips, 3 crops)."""
  try:
    clips, crops = (int(v) for v in views.split('x'))
  except ValueError:
    raise ConfigError(f"views {views!r} is not 'CLIPSxCROPS' such as '1x1' or '2x3'") from None
  if clips not in (1, 2) or crops not in (1, 3):
    raise ConfigError(f"views {views!r}: clips must be 1 or 2 and crops 1 or 3")
  return clips, crops


def make_eval_step(model):
  """(variables, batch) -> (logits [B, C] averaged over views, clip features [B, D])."""

  def step(variables, batch):
    clips = batch['clips']
    size, views = clips.shape[:2]
    logits, state = model.apply(variables, clips.reshape(size * views, *clips.shape[2:]),
                                train=False, mutable=['intermediates'])
    features = state['intermediates']['features'][0]
    return (logits.reshape(size, views, -1).mean(axis=1),
            features.reshape(size, views, -1).mean(axis=1))

  return step


def run(eval_step, variables, dataset, mesh, max_features: int = 2000) -> dict:
  """Runs `eval_step` over every batch; returns host arrays of the valid examples."""
  logits, labels, index, features = [], [], [], []
  kept = 0
  for local in dataset:
    batch = sharding.global_batch(local, mesh)
    batch_logits, batch_features = eval_step(variables, batch)
    mask = sharding.to_host(batch['mask']) > 0
    logits.append(sharding.to_host(batch_logits)[mask])
    labels.append(sharding.to_host(batch['labels'])[mask])
    index.append(sharding.to_host(batch['index'])[mask])
    if kept < max_features:
      features.append(sharding.to_host(batch_features)[mask])
      kept += int(mask.sum())
  return {'logits': np.concatenate(logits), 'labels': np.concatenate(labels),
          'index': np.concatenate(index),
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


def write_results(directory, name: str, results: dict, class_names, features=None,
                  labels=None):
  """Writes `<name>.json` (metrics, per-class accuracy, class names), the confusion-matrix PNG
  and the t-SNE PNG of clip features into `directory`; returns the JSON path."""
  from cstm_jax import plots  # matplotlib only where results are written
  directory = paths.resolve(directory)
  summary = {**results, 'confusion': np.asarray(results['confusion']).tolist(),
             'class_names': list(class_names)}
  path = directory / f'{name}.json'
  paths.write_text(path, json.dumps(summary, indent=1))
  plots.confusion_matrix(results['confusion'], class_names, directory / f'{name}_confusion.png',
                         title=f"{name}: top-1 {results['top1']:.1f}%")
  if features is not None and len(features) >= 4:
    # `run` keeps the features of the first `max_features` clips only.
    plots.tsne(features, labels[:len(features)], class_names, directory / f'{name}_tsne.png')
  return path

