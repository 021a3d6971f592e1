"""The throughput harness on CPU: well-formed reports, FLOPs that agree with the model summary,
clear errors. No test asserts a speed."""
import json
import subprocess
import sys

import matplotlib.image
import pytest

from cstm_jax.analysis import benchmark, summary


TINY = ['--frames', '2', '--batch', '8', '--crop', '60', '--width', '0.125', '--warmup', '1',
        '--repeats', '2', '--steps', '1']
KEYS = {'model', 'frames', 'crop', 'batch', 'dtype', 'mode', 'params', 'gflops', 'clips_per_s',
        'compile_s', 'device', 'videos_per_s', 'memory_gb', 'vs_reference'}


@pytest.fixture(scope='module')
def reports(tmp_path_factory):
  out = tmp_path_factory.mktemp('bench')
  paths = {kind: out / f'bench.{ext}' for kind, ext in
           (('json', 'json'), ('markdown', 'md'), ('plot', 'png'))}
  assert benchmark.main(['--models', 'cstm_bninception',
                         '--mode', 'inference,train', *TINY,
                         *[a for kind, path in paths.items() for a in (f'--{kind}', str(path))],
                         '--hlo', str(out / 'hlo')]) == 0
  return {**paths, 'hlo': out / 'hlo'}


def test_reports_are_well_formed(reports):
  rows = json.loads(reports['json'].read_text())
  assert [(r['model'], r['mode']) for r in rows] == [
      ('cstm_bninception', 'inference'), ('cstm_bninception', 'train')]
  for row in rows:
    assert KEYS <= set(row)
    # 64 breaks BN-Inception's pooling shapes: the harness raised it to the nearest crop that fits.
    assert row['crop'] == 63 and row['frames'] == 2 and row['batch'] == 8
    assert row['clips_per_s'] > 0 and row['compile_s'] > 0 and row['memory_gb'] > 0
    assert row['device'] == '8 x cpu (cpu)'
  assert all(r['vs_reference'] == 1.0 for r in rows)  # CSTM is the reference
  assert rows[1]['gflops'] > 2 * rows[0]['gflops']  # a train step is forward + backward

  table = reports['markdown'].read_text().splitlines()
  assert table[0].startswith('| model | frames x clips |') and len(table) == 2 + len(rows)
  assert all(line.count('|') == table[0].count('|') for line in table)
  hlo = sorted(reports['hlo'].iterdir())
  assert [p.name for p in hlo][0] == 'cstm_bninception_2f_63px_float32_inference.hlo.txt'
  assert len(hlo) == 2 and all('convolution(' in p.read_text() for p in hlo)
  image = matplotlib.image.imread(reports['plot'])
  assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
  assert image.std() > 0.01  # something is drawn


def test_flops_agree_with_the_model_summary(reports):
  """The harness counts FLOPs on the step lowered for one device with native grouped convs (on
  CPU and GPU alike): the summary's forward for inference, about 3x that for a train step."""
  rows = json.loads(reports['json'].read_text())
  for row in rows:
    counted = summary.summarize(row['model'], frames=2, crop=row['crop'], width=0.125)
    assert row['params'] == counted['params']
    # Summary counts multiply-adds (FLOPs / 2) of the same forward, as XLA runs it.
    forward = 2 * counted['gmacs_xla']
    if row['mode'] == 'inference':
      assert row['gflops'] == pytest.approx(forward, rel=0.02)
    else:
      assert 2.5 * forward < row['gflops'] < 3.5 * forward
    assert row['gpu_conv_nhwc'] is False and row['kernels'] > 0


def test_unknown_model_is_refused_with_the_known_names(capsys):
  with pytest.raises(SystemExit):
    benchmark.main(['--models', 'cstm_bninception,c3d'])
  err = capsys.readouterr().err
  assert "unknown models ['c3d']" in err and 'i3d_resnet50' in err and 'r2plus1d_34' in err
  with pytest.raises(SystemExit):
    benchmark.main(['--published', '--models', 's3d'])
  assert "no published setting for ['s3d']" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    benchmark.main(['--mode', 'eval'])
  assert '--mode eval: choose from inference, train' in capsys.readouterr().err


def test_published_settings_and_crops(capsys):
  assert benchmark.fitting_crop('tsn_inception_v3', 224, 8) == 229  # 224 breaks Inception v3
  assert benchmark.fitting_crop('cstm_bninception', None, 8) == 224
  raised = benchmark.settings(benchmark.parse_args(['--models', 'tsn_inception_v3', '--crop',
                                                    '224', '--frames', '8']))
  assert {s.crop for s in raised} == {229}
  assert ('tsn_inception_v3: --crop 224 does not fit its shapes; measuring at 229'
          in capsys.readouterr().err)
  args = benchmark.parse_args(['--published', '--models', 'cstm_bninception,i3d_resnet50',
                               '--mode', 'inference'])
  points = [(s.model, s.frames, s.views, s.setting) for s in benchmark.settings(args)]
  assert points == [('cstm_bninception', 8, 1, 'published'), ('i3d_resnet50', 32, 2, 'published')]


def test_ratios_compare_matched_frames_and_published_settings():
  row = lambda model, frames, views, speed, setting='matched': {
      'model': model, 'frames': frames, 'views': views, 'videos_per_s': speed, 'mode': 'train',
      'dtype': 'bfloat16', 'batch': 16, 'setting': setting}
  rows = benchmark.with_reference_ratios([
      row('cstm_bninception', 8, 1, 100.0), row('tsn_bninception', 8, 1, 125.0),
      row('tsn_bninception', 16, 1, 60.0),
      row('cstm_bninception', 8, 1, 80.0, 'published'),
      row('i3d_resnet50', 32, 2, 4.0, 'published')])
  assert [r['vs_reference'] for r in rows] == [1.0, 1.25, None, 1.0, 0.05]


def test_benchmark_imports_without_the_data_stack():
  code = ('import sys; import cstm_jax.analysis.benchmark; '
          'print(sorted(m for m in ("grain", "tensorflow_datasets", "cv2", "av") '
          'if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == '[]'
