"""Metrics out of a run: TensorBoard event files (tensorboardX) and `metrics.jsonl`.

Only process 0 writes; on the others every call is a no-op.
"""
import json
import pathlib

import jax


class MetricWriter:

  def __init__(self, workdir):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    from tensorboardX import SummaryWriter
    workdir = pathlib.Path(workdir)
    self.tensorboard = SummaryWriter(str(workdir / 'tensorboard'))
    self.jsonl = open(workdir / 'metrics.jsonl', 'a')

  def write(self, step: int, scalars: dict) -> None:
    if not self.active:
      return
    for name, value in scalars.items():
      self.tensorboard.add_scalar(name, value, step)
    self.jsonl.write(json.dumps({'step': int(step), **{k: float(v) for k, v in scalars.items()}})
                     + '\n')
    self.jsonl.flush()

  def close(self) -> None:
    if self.active:
      self.tensorboard.close()
      self.jsonl.close()


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
