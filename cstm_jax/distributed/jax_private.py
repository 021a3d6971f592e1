"""The one place this project reaches into JAX's private modules, for what JAX has no public API.

- `distributed_client()`: the coordination service's client of a multi-process job (its
  key-value store carries the peers' liveness counters, `peers.PeerWatch`). `jax.distributed`
  offers `initialize`, `shutdown` and `is_initialized` only; orbax reads the same private field.

`tests/test_jax_private.py` fails, naming the jax version, when a JAX release moves it.
"""
from typing import Any, Optional


class MovedError(RuntimeError):
  """A private JAX name this project depends on is gone from the installed jax."""


def distributed_client() -> Optional[Any]:
  """The `DistributedRuntimeClient` of `jax.distributed.initialize`, or None in a single process
  (nothing initialized). Raises `MovedError` when this jax keeps it elsewhere."""
  import jax
  try:
    from jax._src import distributed
    return distributed.global_state.client
  except (ImportError, AttributeError) as error:
    raise MovedError(f'jax {jax.__version__} no longer has '
                     f'jax._src.distributed.global_state.client ({error}); '
                     'cstm_jax/distributed/jax_private.py must follow it') from error
