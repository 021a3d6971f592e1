"""Metrics out of a run: TensorBoard event files (tensorboardX) and `metrics.jsonl`.

Only process 0 writes; on the others every call is a no-op. The workdir may be local or `gs://`.
"""
import json
import sys

import jax
from absl import logging

from cstm_foundation import paths


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch where torch is installed but not yet
  imported: tensorboardX imports it only to accept torch tensors, and it costs seconds at every
  start (we log Python floats)."""
  hide = 'torch' not in sys.modules
  if hide:
    sys.modules['torch'] = None  # `import torch` raises ImportError, which tensorboardX expects
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules['torch']
  return SummaryWriter


class MetricWriter:
  """Writes scalars of a run that starts (or resumes) at `start_step`: what an earlier, killed
  start logged after that step is dropped from `metrics.jsonl` and hidden in TensorBoard, and a
  scalar it logged at that step is not logged again (an evaluation repeated after a stop)."""

  def __init__(self, workdir, start_step: int = 0):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    SummaryWriter = _summary_writer_class()
    paths.register_tensorboard_filesystems()
    workdir = paths.resolve(workdir)
    self.tensorboard = SummaryWriter(str(workdir / 'tensorboard'),
                                     purge_step=start_step + 1 if start_step else None)
    _drop_after(workdir / 'metrics.jsonl', start_step)
    self._at_start = {k for r in read_metrics(workdir) if r['step'] == start_step for k in r}
    self._start_step = start_step
    self.jsonl = paths.GrowingFile(workdir / 'metrics.jsonl')

  def has(self, step: int, name: str) -> bool:
    """Whether the run logged `name` at `step` (the step it resumed at) before this start."""
    return self.active and step == self._start_step and name in self._at_start

  def write(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    scalars = {k: v for k, v in scalars.items() if not self.has(step, k)}
    if not scalars:
      return
    for name, value in scalars.items():
      self.tensorboard.add_scalar(name, value, step)
    self.tensorboard.flush()  # a killed run keeps its curves (in gs://: rewrites the object)
    line = json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}}) + '\n'
    self.jsonl.write(line.encode())
    self.jsonl.flush()

  def close(self) -> None:
    if self.active:
      self.tensorboard.close()
      self.jsonl.close()


def read_metrics(workdir) -> list[dict]:
  path = paths.resolve(workdir) / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _drop_after(path, step: int) -> None:
  """Removes the records after `step` (logged past the checkpoint a run resumes from)."""
  if not path.exists():
    return
  lines = path.read_text().splitlines()
  kept = [line for line in lines if json.loads(line)['step'] <= step]
  if len(kept) < len(lines):
    paths.write_text(path, ''.join(line + '\n' for line in kept))
    logging.info('metrics.jsonl: dropped %d records logged after step %d', len(lines) - len(kept),
                 step)
