"""Test setup: 8 CPU devices for sharding tests, fast compiles, a persistent compile cache."""
import os
import pathlib

# Must happen before jax is imported anywhere.
_flags = os.environ.get('XLA_FLAGS', '')
if 'xla_force_host_platform_device_count' not in _flags:
  _flags += ' --xla_force_host_platform_device_count=8'
if 'xla_backend_optimization_level' not in _flags:
  _flags += ' --xla_backend_optimization_level=0'  # compile speed matters more than run speed
os.environ['XLA_FLAGS'] = _flags.strip()

import jax  # noqa: E402

jax.config.update('jax_default_prng_impl', 'rbg')  # cheaper random init to compile
jax.config.update('jax_compilation_cache_dir',
                  str(pathlib.Path(__file__).resolve().parent.parent / '.jax_cache'))
