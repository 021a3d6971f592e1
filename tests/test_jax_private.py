"""JAX's private names the project relies on (cstm_jax/distributed/jax_private.py) are still
where it looks, and nothing else of the project reaches into jax._src."""
import ast
import pathlib

import jax

from cstm_jax.distributed import jax_private

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_distributed_client_is_found_and_is_none_in_a_single_process():
  # A jax that moved the field raises MovedError here, naming its version.
  assert jax_private.distributed_client() is None
  assert not jax.distributed.is_initialized()


def test_only_jax_private_imports_jax_internals():
  offenders = []
  for folder in ('cstm_foundation', 'input_pipeline', 'cstm_jax', 'configs', 'scripts'):
    for path in (ROOT / folder).rglob('*.py'):
      for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module or ''] if isinstance(node, ast.ImportFrom)
                 else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        if any(n == 'jax._src' or n.startswith('jax._src.') for n in names):
          offenders.append(str(path.relative_to(ROOT)))
  assert sorted(set(offenders)) == ['cstm_jax/distributed/jax_private.py']
