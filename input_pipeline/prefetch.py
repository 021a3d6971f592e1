"""Batches made ready in a background thread, and the time the consumer waited for each.

`Prefetched(iterator, place)` pulls batches from a grain iterator in a thread, passes each through
`place` (the training loop sends it to the devices there, so the copy overlaps the step before),
and keeps up to `depth` of them ready. `next()` returns the next one; `last_wait_s` is how long
that call waited, which is the input wait of a step when the caller calls it once the previous
step has finished. Its state (`get_state`, what orbax saves through grain's checkpoint handler)
is the wrapped iterator's state after the last batch *returned*, not after the batches held
ready, so a run resumed from a checkpoint sees every batch once. Errors of the wrapped iterator
are raised by `next()`, a loader worker's death as what it means (`worker_pools.loader_error`:
the stop it died of, or one line naming it); `close()` stops the thread.
"""
import queue
import threading
import time
from typing import Any, Callable, Optional

import grain

from input_pipeline import worker_pools

_END = object()


class Prefetched(grain.DatasetIterator):

  def __init__(self, iterator, place: Optional[Callable[[Any], Any]] = None, depth: int = 2):
    super().__init__()
    self._iterator, self._place = iterator, place or (lambda batch: batch)
    self._batches = worker_pools.loaded(iterator)
    self._state = iterator.get_state()
    self._ready = queue.Queue(maxsize=max(1, depth))
    self._stop = threading.Event()
    self._closed = False
    self.last_wait_s = 0.0
    self._thread = threading.Thread(target=self._fill, name='batch-prefetch', daemon=True)
    self._thread.start()

  def _fill(self) -> None:
    try:
      while not self._stop.is_set():
        batch = next(self._batches)
        item = (self._place(batch), self._iterator.get_state(), None)
        if not self._put(item):
          return
    except StopIteration:
      self._put((_END, None, None))
    except BaseException as error:  # raised again by next(), in the consumer's thread
      self._put((None, None, error))

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def __next__(self):
    start = time.perf_counter()
    batch, state, error = self._ready.get()
    self.last_wait_s = time.perf_counter() - start
    if error is not None:
      self._stop.set()
      raise error
    if batch is _END:
      self._stop.set()
      raise StopIteration
    self._state = state
    return batch

  def get_state(self) -> dict:
    return self._state

  def set_state(self, state) -> None:
    raise NotImplementedError('restore the wrapped iterator before wrapping it in Prefetched')

  def close(self, timeout_s: float = 10.0) -> None:
    """Stops the thread (it finishes the batch it is making, then exits), drops the batches
    held ready and closes the wrapped iterator, whose worker processes then free their shared
    memory (else Python warns of leaked shared_memory objects at exit).

    The iterator is closed even when the thread is still waiting for a batch after `timeout_s`
    (loader workers still starting on a loaded machine): left open, grain's own exit finalizer
    would close it while the interpreter shuts down, after multiprocessing's queue finalizers
    closed its queues (`OSError: handle is closed`, a traceback after a stop's line). The
    thread, a daemon, then takes the closed iterator's error and ends without a word. Closing
    again (grain's `DatasetIterator.__del__` does) does nothing."""
    if self._closed:
      return
    self._closed = True
    self._stop.set()
    deadline = time.monotonic() + timeout_s
    while self._thread.is_alive() and time.monotonic() < deadline:
      self._drain()  # unblocks a put
      self._thread.join(timeout=0.1)
    self._drain()
    if hasattr(self._iterator, 'close'):
      self._iterator.close()
    self._thread.join(timeout=1.0)

  def _drain(self) -> None:
    try:
      while True:
        self._ready.get_nowait()
    except queue.Empty:
      pass
