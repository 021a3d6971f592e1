"""Metrics out of a run: TensorBoard event files (tensorboardX) and `metrics.jsonl`.

Only process 0 writes; on the others every call is a no-op. The workdir may be local or `gs://`.
"""
import json

import jax

from cstm_jax import paths


class MetricWriter:

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    from tensorboardX import SummaryWriter
    paths.register_tensorboard_filesystems()
    workdir = paths.resolve(workdir)
    self.tensorboard = SummaryWriter(str(workdir / 'tensorboard'))
    self.jsonl = paths.GrowingFile(workdir / 'metrics.jsonl')

  def write(self, step: int, scalars: dict) -> None:
    if not self.active:
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
