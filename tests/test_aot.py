"""Ahead-of-time compilation for TPU slices that are not here (libtpu, deviceless), target
parsing and the HLO reading behind the report."""
import gzip
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from cstm_jax.analysis import aot, aot_targets, hlo_stats, summary
from cstm_jax.config import finish, loader

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = pathlib.Path(__file__).resolve().parent / 'data'


@pytest.mark.parametrize('spec, topology, chips_per_host', [
    ('tpu:v5e:2x2', 'v5e:2x2', None),
    ('tpu:v5e-8', 'v5e:2x4', (2, 4, 1)),       # Cloud v5e-8 / v6e-8: one host of 8 chips
    ('tpu:v6e-8', 'v6e:2x4', (2, 4, 1)),
    ('tpu:v5litepod-256', 'v5e:16x16', None),
    ('tpu:v5p-8', 'v5p:2x2x1', None),          # v5p-N and v4-N count TensorCores: N/2 chips
    ('tpu:v5p-128', 'v5p:4x4x4', None),
    ('tpu:v4-32', 'v4:4x2x2', None),
])
def test_tpu_targets(spec, topology, chips_per_host):
  target = aot_targets.parse(spec)
  assert (target.platform, target.topology, target.chips_per_host) == ('tpu', topology,
                                                                       chips_per_host)


def test_cuda_targets_and_bad_targets():
  assert aot_targets.parse('cuda:h100').topology == '1x1x1'
  assert aot_targets.parse('cuda:h100x8').topology == '1x1x8'
  assert aot_targets.parse('cuda:a100x8x4').topology == '1x4x8'
  for bad in ('tpu:v5e-7', 'tpu:v9', 'cuda:v100', 'gpu:h100', 'h100'):
    with pytest.raises(ValueError, match=f'--target {bad}: '):
      aot_targets.parse(bad)


def test_gpu_memory_is_the_share_jax_allocates(monkeypatch):
  h100 = aot_targets.parse('cuda:h100')
  monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
  memory = aot_targets.GPUS['h100']['memory']
  assert aot_targets.memory_limit_bytes(h100, None) == int(0.75 * memory)
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')
  assert aot_targets.memory_limit_bytes(h100, None) == int(0.9 * aot_targets.GPUS['h100']['memory'])


def test_topology_devices_and_hosts():
  v5e_256 = aot_targets.devices(aot_targets.parse('tpu:v5e-256'))
  assert len(v5e_256) == 256 and len({d.process_index for d in v5e_256}) == 64
  v5e_8 = aot_targets.devices(aot_targets.parse('tpu:v5e-8'))
  assert len(v5e_8) == 8 and {d.process_index for d in v5e_8} == {0}
  assert v5e_8[0].device_kind == 'TPU v5 lite'


def test_largest_fitting_batch_takes_few_probes():
  probes = []

  def memory_at(batch):  # 3 GiB fixed + 0.7 GiB a clip, a little convex
    probes.append(batch)
    return int((3 + 0.7 * batch + 0.002 * batch ** 2) * 2 ** 30)

  limit = 16 * 2 ** 30
  expected = max(b for b in range(1, 200) if memory_at(b) <= limit)
  probes.clear()
  known = {4: memory_at(4)}
  assert aot.largest_fitting(memory_at, limit, known, max_batch=256) == expected
  assert len(probes) <= 6
  # Nothing fits; and everything up to the cap fits.
  assert aot.largest_fitting(lambda b: limit + b, limit, {1: limit + 1}, 64) == 0
  assert aot.largest_fitting(lambda b: b, limit, {2: 2}, 8) == 8


def test_train_step_on_a_tpu_slice(tmp_path):
  """main.py's smoke train step on a v5e 2x2 slice: fits, gradients all-reduced, activations
  never all-gathered, and the FLOPs of a train step (about 3x the forward)."""
  config = loader.load(str(ROOT / 'configs/ssv2_8f.py:smoke'))
  config.model.num_classes = 174
  hlo_dir = tmp_path / 'hlo'
  (row,) = aot.analyse(finish.without_data(config), aot_targets.parse('tpu:v5e:2x2'),
                       steps=('train',),
                       hlo_dir=str(hlo_dir), log=lambda _: None)
  assert row['devices'] == 4 and row['hosts'] == 1 and row['device_kind'] == 'TPU v5 lite'
  assert row['global_batch'] == 8 and row['per_device_batch'] == 2
  assert row['fits'] and 0 < row['memory_gib'] < row['limit_gib'] == 16
  assert row['activation_all_gathers'] == 0
  assert row['collectives']['all-reduce']['count'] > 0  # gradients and BatchNorm statistics
  assert set(row['collectives']) <= {'all-reduce'}
  forward = 2 * summary.summarize_config(config.model, config.data.crop)['gmacs_xla']
  assert 2.5 * forward < row['gflops_per_clip'] < 3.5 * forward
  assert (hlo_dir / 'tpu_v5e_2x2_train.hlo.txt').read_text().startswith('HloModule')


@pytest.mark.parametrize('experiment', ['ssv2_trn', 'ssv2_s3dg', 'ssv2_stm_resnet50'])
def test_the_other_papers_models_compile_for_a_tpu_slice(experiment):
  """TRN, S3D-G and STM: the smoke eval step fits a v5e 2x2 slice with no activation gathered,
  at the FLOPs of the CPU model summary: between its as-run count and its count of every tap
  (the TPU compiler counts some of the 3D convs' padded taps)."""
  config = loader.load(f'{experiment}:smoke')
  # A crop of 96 rather than 32 gives FLOPs the row's three decimals can compare.
  config.model.num_classes, config.data.crop = 174, 96
  (row,) = aot.analyse(finish.without_data(config), aot_targets.parse('tpu:v5e:2x2'),
                       steps=('eval',),
                       log=lambda _: None)
  assert row['fits'] and row['activation_all_gathers'] == 0
  counts = summary.summarize_config(config.model, config.data.crop)
  assert 0.98 * 2 * counts['gmacs_xla'] <= row['gflops_per_clip'] <= 1.05 * 2 * counts['gmacs']


def test_eval_step_on_two_hosts_matches_the_cpu_summary():
  config = loader.load(str(ROOT / 'configs/ssv2_8f.py:smoke'))
  config.model.num_classes = 174
  (row,) = aot.analyse(finish.without_data(config), aot_targets.parse('tpu:v5p-16'),
                       steps=('eval',), log=lambda _: None)
  assert (row['devices'], row['hosts'], row['per_device_batch']) == (8, 2, 1)
  assert row['fits'] and row['collectives'] == {} and row['activation_all_gathers'] == 0
  forward = 2 * summary.summarize_config(config.model, config.data.crop)['gmacs_xla']
  assert row['gflops_per_clip'] == pytest.approx(forward, rel=0.02)


def test_cli_reports_a_step_that_does_not_fit(tmp_path):
  """A per-device batch far past a v5e chip's 16 GiB (the compiler refuses it): exit 1 and one
  line naming the memory."""
  out = tmp_path / 'aot.json'
  result = subprocess.run([
      sys.executable, '-m', 'cstm_jax.analysis.aot', '--config=configs/ssv2_8f.py:smoke',
      '--config.model.num_classes=174', '--target=tpu:v5e:2x2', '--steps=eval',
      '--config.data.eval_batch_size=16384', '--config.data.crop=224', f'--json={out}'
  ], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-2000:]
  (line,) = [l for l in result.stderr.splitlines() if l.startswith('tpu:v5e:2x2: the eval step')]
  (needed,) = re.findall(r'needs ([\d.]+) GiB per device; 16.00 GiB available', line)
  (row,) = json.loads(out.read_text())
  assert row['fits'] is False and row['per_device_batch'] == 4096
  assert row['memory_gib'] == float(needed) > 16
  assert '| tpu:v5e:2x2 | 4 (1) | eval |' in result.stdout


def test_a_second_deviceless_compile_is_quiet_and_leaves_the_cache_alone(tmp_path):
  """A deviceless program cannot be read back from JAX's persistent cache (no device client):
  the second of two identical runs printed JAX's 'Error reading persistent compilation cache
  entry' warning. The compiles stay out of the cache; the cache folder stays empty."""
  cache = tmp_path / 'cache'
  env = {**os.environ, 'CSTM_COMPILE_CACHE': str(cache)}
  for run in range(2):
    result = subprocess.run([
        sys.executable, '-m', 'cstm_jax.analysis.aot', '--config=configs/ssv2_8f.py:smoke',
        '--config.model.num_classes=174', '--target=tpu:v5e:2x2', '--steps=eval'
    ], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'Warning' not in result.stderr and 'cache' not in result.stderr, (run, result.stderr)
  assert not cache.exists() or not any(cache.iterdir())


def test_cli_refuses_a_batch_that_does_not_split_a_bad_target_and_no_class_count():
  run = lambda *args: subprocess.run(
      [sys.executable, '-m', 'cstm_jax.analysis.aot', '--config=configs/ssv2_8f.py:smoke', *args],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  result = run('--target=tpu:v5e:2x2')  # a smoke config leaves the class count to its dataset
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: model.num_classes is 0: with no dataset to take it from, set '
      '--config.model.num_classes (e.g. 174)')
  result = run('--target=tpu:v5e-256', '--config.model.num_classes=174')
  assert result.returncode == 2
  assert 'global train batch 8 does not split over 256 devices' in result.stderr
  result = run('--target=tpu:v5e-7')
  assert result.returncode != 0 and 'unknown Cloud TPU type' in result.stderr


def test_hlo_stats_of_a_cuda_step():
  """The counts behind the CUDA columns, on the optimised HLO of a deviceless H100 compile
  (the smoke CSTM eval step, 2 GPUs; `tests/data/README.md` says how it was made)."""
  hlo = gzip.decompress((FIXTURES / 'cuda_h100x2_cstm_smoke_eval.hlo.txt.gz').read_bytes())
  stats = hlo_stats.step_stats(hlo.decode())
  assert stats.library_calls['cudnn'] == sum(stats.conv_layouts.values())
  layouts = {key.split()[0] for key in stats.conv_layouts}
  assert layouts == {'2d', '3d'}
  assert stats.kernels > stats.fusions > 0 and stats.transposes > 0
  assert 0 < stats.transpose_bytes < 1e9


def test_hlo_stats_counts_collectives_and_layout_copies():
  text = '''HloModule m

%fused_transpose (p: f32[8,4]) -> f32[4,8] {
  %p = f32[8,4]{1,0} parameter(0)
  ROOT %t = f32[4,8]{1,0} transpose(%p), dimensions={1,0}
}

%fused_add (a: f32[4,8], b: f32[4,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[4,8]{1,0} parameter(1)
  ROOT %s = f32[4,8]{1,0} add(%a, %b)
}

%sum (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %z = f32[] add(%x, %y)
}

ENTRY %main (p0: f32[8,4]) -> f32[16,8] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %fusion = f32[4,8]{1,0} fusion(%p0), kind=kLoop, calls=%fused_transpose
  %fusion.1 = f32[4,8]{1,0} fusion(%fusion, %fusion), kind=kLoop, calls=%fused_add
  %all-reduce = f32[4,8]{1,0} all-reduce(%fusion.1), replica_groups={{0,1}}, to_apply=%sum
  %copy = f32[4,8]{0,1} copy(%all-reduce)
  %all-gather-start = (f32[4,8]{0,1}, f32[16,8]{1,0}) all-gather-start(%copy), dimensions={0}
  ROOT %all-gather-done = f32[16,8]{1,0} all-gather-done(%all-gather-start)
}
'''
  stats = hlo_stats.step_stats(text)
  assert stats.kernels == 5 and stats.fusions == 2
  assert (stats.transposes, stats.transpose_bytes) == (1, 2 * 4 * 8 * 4)
  assert (stats.copies, stats.copy_bytes) == (1, 2 * 4 * 8 * 4)
  assert stats.collectives == {'all-reduce': {'count': 1, 'bytes': 128},
                               'all-gather': {'count': 1, 'bytes': 512}}
  assert stats.all_gathers == [('(f32[4,8]{0,1}, f32[16,8]{1,0})', '0')]


def test_grouped_convs_trace_only_the_target_platforms_way():
  """With a mesh set (every step builder sets one) only the target's grouped convolution is
  traced: on CPU one dense 3D conv per group (up to `CPU_UNROLLED_GROUPS`) or one
  block-diagonal dense 3D conv, on TPU one grouped 2D conv over stacked temporal taps. Without a
  mesh (a multi-platform export) every way, behind `lax.platform_dependent`; GPUs take XLA's
  grouped 3D conv."""
  import re
  import jax
  import jax.numpy as jnp
  from cstm_jax.distributed import sharding
  from cstm_jax.models import temporal_ops
  x = jnp.ones((4, 2, 8, 8, 128))
  kernels = {groups: jnp.ones((3, 3, 3, 128 // groups, 128)) for groups in (2, 8)}

  def traced(groups):
    """(a cond?, sorted (feature groups, spatial dims) of each conv traced)."""
    jaxpr = str(jax.make_jaxpr(lambda x, k: temporal_ops.conv3d(x, k, groups))(x, kernels[groups]))
    convs = re.findall(r'feature_group_count=(\d+)\n.*?window_strides=\(([^)]*)\)', jaxpr,
                       re.S)
    return 'cond' in jaxpr, sorted((int(g), len(strides.split(','))) for g, strides in convs)

  cpu = {2: [(1, 3), (1, 3)], 8: [(1, 3)]}
  for groups in (2, 8):
    assert traced(groups) == (True, sorted(cpu[groups] + [(groups, 2), (groups, 3)]))
    with temporal_ops.native_grouped_convs():
      assert traced(groups) == (False, [(groups, 3)])
  tpu = aot_targets.devices(aot_targets.parse('tpu:v5e:2x2'))
  for devices, groups, expected in (
      (jax.devices('cpu')[:1], 2, cpu[2]), (jax.devices('cpu')[:1], 8, cpu[8]),
      (tpu, 2, [(2, 2)]), (tpu, 8, [(8, 2)])):
    with jax.set_mesh(sharding.make_mesh(1, devices)):
      assert traced(groups) == (False, expected), (devices[0].platform, groups)
