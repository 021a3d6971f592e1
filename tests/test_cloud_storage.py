"""A run directory in Cloud Storage, against a local GCS emulator on the loopback address:
two processes (as on two TPU hosts) train into gs://, then the run is evaluated, predicted
from and exported, all through gs:// paths."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from input_pipeline import labels
from runs import free_port, process_env, run_until

ROOT = pathlib.Path(__file__).resolve().parent.parent
BUCKET = 'cstm-test'


@pytest.fixture
def emulator():
  """tests/gcs_emulator.py on 127.0.0.1 with an empty bucket; yields the variables that point
  gcsfs (epath), tensorstore (orbax arrays) and google-auth at it and keep every request on
  the loopback address."""
  port = free_port()
  process = subprocess.Popen(
      [sys.executable, str(ROOT / 'tests' / 'gcs_emulator.py'), str(port), BUCKET],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f'http://127.0.0.1:{port}'
  deadline = time.monotonic() + 30
  while True:
    try:
      socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
      break
    except OSError:
      assert time.monotonic() < deadline and process.poll() is None, 'emulator did not start'
      time.sleep(0.1)
  try:
    yield {
        'STORAGE_EMULATOR_HOST': url,             # gcsfs
        'FSSPEC_GS_TOKEN': 'anon',                # gcsfs: no credential lookup
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',  # no gRPC bucket-layout probe
        'TENSORSTORE_GCS_HTTP_URL': url,          # orbax's array writes and reads
        'TENSORSTORE_GCS_HTTP_VERSION': '1',
        'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'none',  # tensorstore: no metadata-server lookup
        'GCE_METADATA_HOST': '127.0.0.1:9', 'GCE_METADATA_IP': '127.0.0.1:9',
        'NO_GCE_CHECK': 'true',
    }
  finally:
    process.terminate()
    process.wait(timeout=30)


def objects(env, prefix: str) -> dict[str, int]:
  """Object name -> size under `prefix` in the emulator's bucket (its JSON API)."""
  query = urllib.parse.urlencode({'prefix': prefix, 'maxResults': 10000})
  with urllib.request.urlopen(f"{env['STORAGE_EMULATOR_HOST']}/storage/v1/b/{BUCKET}/o?{query}",
                              timeout=10) as response:
    items = json.loads(response.read()).get('items', [])
  return {item['name'][len(prefix):]: int(item['size']) for item in items}


def read(env, name: str) -> bytes:
  quoted = urllib.parse.quote(name, safe='')
  with urllib.request.urlopen(f"{env['STORAGE_EMULATOR_HOST']}/download/storage/v1/b/{BUCKET}/o/"
                              f'{quoted}?alt=media', timeout=10) as response:
    return response.read()


def test_two_processes_train_and_serve_from_cloud_storage(emulator, prepared_ssv2,
                                                                  synthetic_ssv2, tmp_path):
  workdir = f'gs://{BUCKET}/runs/smoke'
  env = process_env(4, **emulator)  # two processes of four CPU devices, as tests/test_launch.py
  # Steps whose checkpoint is complete: orbax's commit marker at the step's top level.
  steps = lambda: {int(parts[1]) for parts in map(lambda n: n.split('/'), objects(
      env, 'runs/smoke/')) if len(parts) == 3 and parts[0] == 'checkpoints' and
      parts[1].isdigit() and parts[2] == 'commit_success.txt'}

  def job():
    """Both processes, as docs/clusters.md starts them on each host; exits with the first failure."""
    port = free_port()
    main = (f'{sys.executable} main.py --config=configs/ssv2_r2plus1d_18.py:smoke '
            f'--workdir={workdir} --config.data.data_dir={prepared_ssv2[0]} '
            f'--config.train.eval_every_epochs=1000 --coordinator_address=127.0.0.1:{port} '
            '--num_processes=2')
    return ['bash', '-c', f'{main} --process_id=0 & {main} --process_id=1 & '
            'wait -n; code=$?; wait; exit $code']

  # (Killed and resumed: tests/test_launch.py; restored from gs:// below by eval, predict and
  # export.)
  code, err = run_until(job(), env, lambda: False)
  assert code == 0, err[-3000:]

  stored = objects(env, 'runs/smoke/')
  for name in ('config.json', 'classes.json', 'final_metrics.json', 'metrics.jsonl',
               'best/best.json', 'eval/final_1x1.json', 'training_curves.png',
               'eval/final_1x1_confusion.png', 'eval/final_1x1_tsne.png'):
    assert stored.get(name, 0) > 0, name
  assert read(env, 'runs/smoke/training_curves.png')[:8] == b'\x89PNG\r\n\x1a\n'
  assert sorted(steps()) == [4, 6]  # keep_checkpoints = 2
  assert {f'checkpoints/6/data/process_{i}-of-2.json' for i in range(2)} <= set(stored)
  assert len([n for n in stored if n.startswith('tensorboard/events.out.tfevents.')]) == 1
  records = [json.loads(line) for line in read(env, 'runs/smoke/metrics.jsonl').splitlines()]
  assert [r['step'] for r in records if 'loss' in r] == [2, 4, 6]
  final = json.loads(read(env, 'runs/smoke/final_metrics.json'))['1x1']

  # Evaluation of the stored run reproduces the final metrics.
  result = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/ssv2_r2plus1d_18.py:smoke',
       f'--workdir={workdir}', f'--config.data.data_dir={prepared_ssv2[0]}',
       '--config.mode=eval', '--config.eval.checkpoint=latest'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  again = json.loads(read(env, 'runs/smoke/eval/latest_1x1.json'))
  assert (again['top1'], again['examples']) == (final['top1'], final['examples'])

  # Predict from the stored run, and export it into the bucket.
  video = next((synthetic_ssv2[0] / labels.SSV2_VIDEOS).glob('*.webm'))
  result = subprocess.run(
      [sys.executable, '-m', 'cstm_jax.inference.predict', '--workdir', workdir,
       '--which', 'latest', '--video', str(video), '--json'], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  top = json.loads(result.stdout)['top']
  classes = json.loads(read(env, 'runs/smoke/classes.json'))
  assert len(top) == 5 and all(t['class'] in classes for t in top)
  result = subprocess.run(
      [sys.executable, '-m', 'cstm_jax.inference.export', '--workdir', workdir, '--which', 'latest',
       '--out', f'gs://{BUCKET}/export/model.jax', '--platforms', 'cpu'], cwd=ROOT, env=env,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  exported = objects(env, 'export/')
  assert exported['model.jax'] > 10_000 and exported['model.jax.json'] > 0


LOCK_SCRIPT = '''
import os
from cstm_jax.distributed import workdir_lock
first = workdir_lock.WorkdirLock('gs://%s/runs/locked')
first.record['pid'] = os.getppid()  # a live process on this host (the test), not this one
first.acquire()
second = workdir_lock.WorkdirLock('gs://%s/runs/locked')
print('created again:', second._create())
try:
  second.acquire()
except workdir_lock.WorkdirInUse as error:
  print('refused:', error)
first.release()
second.acquire()
print('taken after release:', second._read()['pid'] == os.getpid())
second.release()
'''


def test_the_workdir_lock_in_cloud_storage_is_created_only_if_absent(emulator):
  # The create is one request with the ifGenerationMatch=0 precondition: a second writer gets
  # 412, whatever the timing, not a read-then-write race.
  result = subprocess.run([sys.executable, '-c', LOCK_SCRIPT % (BUCKET, BUCKET)], cwd=ROOT,
                          env=process_env(1, **emulator), capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0] == 'created again: False'
  assert lines[1].startswith(f'refused: gs://{BUCKET}/runs/locked: another run is training in '
                             f'this workdir (host {socket.gethostname()}, pid {os.getpid()}')
  assert lines[2] == 'taken after release: True'
