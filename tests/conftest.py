"""Test setup: 8 CPU devices for sharding tests, fast compiles, a persistent compile cache."""
import os
import pathlib

# Must happen before jax is imported anywhere.
_flags = os.environ.get('XLA_FLAGS', '')
if 'xla_force_host_platform_device_count' not in _flags:
  _flags += ' --xla_force_host_platform_device_count=8'
# Compile speed matters more than run speed here: no LLVM optimisation.
if 'xla_backend_optimization_level' not in _flags:
  _flags += ' --xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = _flags.strip()
# CPU only, also where libtpu is installed (the ahead-of-time TPU tests use it deviceless); several
# test processes may load libtpu at once.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
# Also for the subprocesses tests start (main.py runs): cheaper random init to compile, and one
# persistent compilation cache, so a program compiled once is not compiled again.
os.environ.setdefault('JAX_DEFAULT_PRNG_IMPL', 'rbg')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(pathlib.Path(__file__).resolve().parent.parent / '.jax_cache'))



# --- Shared data fixtures: small real datasets made once per test session -------------------

import functools  # noqa: E402
import http.server  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402

SYNTHETIC = {'train': 12, 'val': 8, 'test': 2, 'size': 32, 'seed': 0}


@pytest.fixture(scope='session')
def synthetic_ssv2(tmp_path_factory):
  """Synthetic SSv2-format download (webm + json); returns (dir, {split: [(id, class)]})."""
  from input_pipeline import synthetic
  root = tmp_path_factory.mktemp('ssv2_download')
  written = synthetic.generate(root, SYNTHETIC['train'], SYNTHETIC['val'], test=SYNTHETIC['test'],
                               size=SYNTHETIC['size'], seed=SYNTHETIC['seed'], workers=1)
  return root, written


@pytest.fixture(scope='session')
def prepared_ssv2(synthetic_ssv2, tmp_path_factory):
  """The synthetic download prepared as `something_something_v2` (frames at short side 48)."""
  from input_pipeline import prepare
  data_dir = tmp_path_factory.mktemp('prepared')
  report = prepare.prepare('ssv2', synthetic_ssv2[0], data_dir, workers=2, short_side=48)
  return data_dir, report


# --- A web server on loopback, for the weights a run fetches by name --------------------------

@pytest.fixture
def server(tmp_path):
  """(folder served, base URL, paths requested) of an HTTP server on 127.0.0.1."""
  folder = tmp_path / 'served'
  folder.mkdir()
  requested = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
      requested.append(self.path)
      super().do_GET()

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(Handler, directory=str(folder)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield folder, f'http://127.0.0.1:{httpd.server_address[1]}', requested
  httpd.shutdown()
  httpd.server_close()
