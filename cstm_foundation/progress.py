"""Progress of long loops (prepare, synthetic data, evaluation, predict over folders), drawn by
tqdm: count, rate and ETA on stderr.

On a terminal tqdm redraws its bar in place. Redirected to a file, the same line (tqdm's own
format) is written as a new line every 10 s and at the end, with no carriage returns, so a log
stays readable.
"""
import sys
import time

import tqdm

LOG_INTERVAL_S = 10.0


class Progress:
  """`with Progress(total, 'videos', 'prepare train') as bar: ... bar.update()`."""

  def __init__(self, total: int, unit: str, label: str = '', *, stream=None, enabled: bool = True):
    self.total, self.unit, self.label = total, unit, label
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.count, self.start, self._last_line = 0, time.monotonic(), 0.0
    self._bar = (tqdm.tqdm(total=total, unit=f' {unit}', desc=self.label or None,
                           file=self.stream, dynamic_ncols=True)
                 if enabled and self.tty else None)

  def update(self, n: int = 1) -> None:
    self.count += n
    if self._bar is not None:
      self._bar.update(n)
      return
    now = time.monotonic()
    if self.enabled and (now - self._last_line >= LOG_INTERVAL_S or self.count >= self.total):
      self._last_line = now
      self.stream.write(self.line() + '\n')
      self.stream.flush()

  def line(self) -> str:
    """tqdm's line for the current count, e.g. 'prepare train:  40%|####      | 4/10 [...]'."""
    return tqdm.tqdm.format_meter(self.count, self.total, time.monotonic() - self.start,
                                  ncols=100, prefix=self.label, unit=f' {self.unit}', ascii=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self._bar is not None:
      self._bar.close()


def format_seconds(seconds: float) -> str:
  if seconds == float('inf'):
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else f'{rest // 60}:{rest % 60:02d}'
