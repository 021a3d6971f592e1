"""PNG figures: confusion matrix, t-SNE of clip features (the paper's Fig. 7), per-class gains
(Fig. 5) and training curves."""
import matplotlib

matplotlib.use('Agg')  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cstm_foundation import paths
from cstm_jax.config.zoo import BACKBONES, MODELS  # noqa: E402


def _save(fig, path) -> None:
  """Writes `fig` as a PNG to a local or `gs://` path and closes it."""
  path = paths.resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)


def _short(name: str, width: int = 38) -> str:
  return name if len(name) <= width else name[:width - 1] + '…'


def confusion_matrix(confusion: np.ndarray, class_names, path, title: str = '') -> None:
  """Row-normalised confusion matrix; class names on the axes up to 60 classes."""
  rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
  n = len(class_names)
  size = min(4 + 0.28 * n, 40)
  fig, ax = plt.subplots(figsize=(size, size))
  image = ax.imshow(rows, cmap='Blues', vmin=0, vmax=1)
  if n <= 60:
    ax.set_xticks(range(n), [_short(c) for c in class_names], rotation=90, fontsize=7)
    ax.set_yticks(range(n), [_short(c) for c in class_names], fontsize=7)
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  _save(fig, path)


def tsne(features: np.ndarray, labels: np.ndarray, class_names, *, path, seed: int = 0) -> None:
  """2-D t-SNE of clip features coloured by class."""
  from sklearn.manifold import TSNE
  perplexity = max(2.0, min(30.0, (len(features) - 1) / 3))
  points = TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(
      np.asarray(features, np.float64))
  fig, ax = plt.subplots(figsize=(9, 7))
  cmap = plt.get_cmap('tab20' if len(class_names) <= 20 else 'nipy_spectral')
  for c in np.unique(labels):
    chosen = labels == c
    ax.scatter(points[chosen, 0], points[chosen, 1], s=10,
               color=cmap(c / max(len(class_names) - 1, 1)), label=_short(class_names[c], 30))
  if len(np.unique(labels)) <= 20:
    ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1, 0.5))
  ax.set_title(f't-SNE of clip features ({len(features)} validation clips)')
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  _save(fig, path)


def class_gains(names, gains, path, title: str) -> None:
  """Horizontal bars of per-class top-1 gains (percentage points)."""
  fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 1.5))
  y = np.arange(len(names))[::-1]
  ax.barh(y, gains, color=['tab:green' if g >= 0 else 'tab:red' for g in gains])
  ax.set_yticks(y, [_short(n, 50) for n in names], fontsize=8)
  ax.set_xlabel('top-1 gain (points)')
  ax.set_title(title)
  ax.axvline(0, color='black', linewidth=0.8)
  fig.tight_layout()
  _save(fig, path)


def training_curves(records, path) -> None:
  """Loss and validation top-1 against step from metrics.jsonl records."""
  train = [r for r in records if 'loss' in r]
  val = [r for r in records if 'val_top1' in r]
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  left.plot([r['step'] for r in train], [r['loss'] for r in train])
  left.set_xlabel('step')
  left.set_ylabel('training loss')
  right.plot([r['step'] for r in val], [r['val_top1'] for r in val], marker='o')
  right.set_xlabel('step')
  right.set_ylabel('validation top-1 (%)')
  fig.tight_layout()
  _save(fig, path)


def throughput(rows, path) -> None:
  """Clips/s against GFLOPs per clip (log-log), one point per model and frame count, one panel
  per mode and dtype; 3D CNNs as squares, 2D backbones with temporal modules as circles."""
  rows = [r for r in rows if r.get('clips_per_s')]
  panels = sorted({(r['mode'], r['dtype']) for r in rows})
  fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(7 * max(len(panels), 1), 5.5),
                           squeeze=False)
  frames = sorted({r['frames'] for r in rows})
  colours = {f: plt.get_cmap('tab10')(i) for i, f in enumerate(frames)}
  for ax, (mode, dtype) in zip(axes[0], panels):
    panel = sorted((r for r in rows if (r['mode'], r['dtype']) == (mode, dtype)),
                   key=lambda r: r['clips_per_s'])
    for i, r in enumerate(panel):
      is_3d = BACKBONES[MODELS[r['model']]['backbone']].is_3d
      ax.scatter(r['gflops'], r['clips_per_s'], color=colours[r['frames']],
                 marker='s' if is_3d else 'o', s=40)
      right = i % 2 == 0  # neighbours in speed get labels on alternate sides
      ax.annotate(f"{r['model']} ({r['frames']}f)", (r['gflops'], r['clips_per_s']),
                  fontsize=7, xytext=(5 if right else -5, 0), textcoords='offset points',
                  ha='left' if right else 'right', va='center')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('GFLOPs per clip (XLA)')
    ax.set_ylabel('clips / s')
    ax.set_title(f'{mode}, {dtype}, {rows[0]["device"]}', fontsize=9)
    ax.grid(True, which='both', alpha=0.3)
    for f in frames:
      ax.scatter([], [], color=colours[f], label=f'{f} frames')
    ax.legend(fontsize=8, loc='lower left')
  fig.tight_layout()
  _save(fig, path)
