"""A plain-text progress line for long loops: count, rate, ETA (stderr, no dependencies)."""
import sys
import time


class Progress:
  """`with Progress(total, 'videos') as bar: ... bar.update()`.

  On a terminal the line redraws in place (every 0.5 s); in a log file a new line is written
  every 10 s, so logs stay readable.
  """

  def __init__(self, total: int, unit: str, label: str = '', stream=None):
    self.total, self.unit, self.label = total, unit, label
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.count, self.start = 0, time.monotonic()
    self.min_interval = 0.5 if self.tty else 10.0
    self._last_print = 0.0

  def update(self, n: int = 1) -> None:
    self.count += n
    now = time.monotonic()
    if now - self._last_print >= self.min_interval or self.count >= self.total:
      self._last_print = now
      self.stream.write(('\r' if self.tty else '') + self.line() + ('' if self.tty else '\n'))
      self.stream.flush()

  def line(self) -> str:
    elapsed = max(time.monotonic() - self.start, 1e-9)
    rate = self.count / elapsed
    eta = (self.total - self.count) / rate if rate > 0 else float('inf')
    filled = int(20 * self.count / max(self.total, 1))
    return (f'{self.label}[{"#" * filled}{"." * (20 - filled)}] {self.count}/{self.total} '
            f'{self.unit} {rate:.1f}/s ETA {format_seconds(eta)}')

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if self.tty:
      self.stream.write('\n')
      self.stream.flush()


def format_seconds(seconds: float) -> str:
  if seconds == float('inf'):
    return '?'
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else f'{rest // 60}:{rest % 60:02d}'
