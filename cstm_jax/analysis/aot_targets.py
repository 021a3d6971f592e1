"""Accelerators to compile for without having them: TPU topologies (libtpu) and NVIDIA GPU target
configs (the jax CUDA plugin), as `--target` strings of `cstm_jax.analysis.aot`.

  tpu:v5e:2x2      any topology libtpu accepts: v4:2x2x1, v5e:16x16, v5p:4x4x4, v6e:2x4, ...
  tpu:v5e-8        a Cloud TPU accelerator type (v5e-*, v5p-*, v6e-*, v4-*; v5litepod-* too)
  cuda:h100        one NVIDIA H100 SXM (80 GB); cuda:h100x8 = 8 on one host,
  cuda:a100x8x4    cuda:a100x8x4 = 4 hosts of 8 A100 SXM (80 GB)

Nothing here needs the hardware: `devices(target)` returns the topology's devices, from which a
mesh is built and the real step lowered and compiled.
"""
import dataclasses
import math
import os
import re
from typing import Optional

from cstm_foundation.errors import ConfigError

# Chips per host of the Cloud TPU VMs that are single-host at 8 chips (v5e-8, v6e-8); larger
# slices of these chips have 4 chips per host, which is libtpu's default.
SINGLE_HOST_8 = (2, 4, 1)

# HBM per chip (GiB), by `device_kind`.
TPU_HBM_GIB = {'TPU v4': 32, 'TPU v5 lite': 16, 'TPU v5': 95, 'TPU v6 lite': 32}

# XLA GpuTargetConfig text protos (the fields XLA's own gpu_specs files set). Deviceless cuDNN
# compilation needs cuDNN >= 9.8 in `dnn_version_info`.
_GPU_SPEC = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {smem_per_core}
  threads_per_core_limit: 2048
  core_count: {sms}
  fpus_per_core: {fpus}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: {l2}
  clock_rate_ghz: {clock}
  device_memory_size: {memory}
  shared_memory_per_block_optin: {smem_optin}
  cuda_compute_capability {{ major: {cc_major} minor: {cc_minor} }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 8 }}
device_description_str: "{name}"
"""
GPUS = {
    'h100': dict(name='NVIDIA H100 80GB HBM3', sms=132, fpus=128, bandwidth=3352320000000,
                 l2=52428800, clock=1.98, memory=84978434048, smem_per_core=233472,
                 smem_optin=232448, cc_major=9, cc_minor=0),
    'a100': dict(name='NVIDIA A100-SXM4-80GB', sms=108, fpus=64, bandwidth=2039000000000,
                 l2=41943040, clock=1.41, memory=85031714816, smem_per_core=167936,
                 smem_optin=166912, cc_major=8, cc_minor=0),
}
# JAX takes this fraction of a GPU's memory for its pool unless XLA_PYTHON_CLIENT_MEM_FRACTION says
# otherwise; a step that needs more does not run with the default settings.
GPU_MEMORY_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class Target:
  """A parsed `--target`."""
  spec: str                      # as given
  platform: str                  # 'tpu' or 'cuda'
  topology: str                  # libtpu topology ('v5e:2x4') or 'slices x hosts x devices'
  chips_per_host: Optional[tuple[int, int, int]] = None
  gpu: Optional[str] = None      # key of GPUS


def _tpu_from_accelerator_type(kind: str) -> tuple[str, Optional[tuple]]:
  """'v5e-8' -> ('v5e:2x4', (2, 4, 1)); 'v5p-16' -> ('v5p:2x2x2', None) (v4 and v5p count two
  TensorCores per chip in the name)."""
  m = re.fullmatch(r'(v4|v5p|v5e|v5litepod|v6e)-(\d+)', kind)
  if not m:
    raise ConfigError(kind)
  generation, count = m.group(1).replace('v5litepod', 'v5e'), int(m.group(2))
  if generation in ('v4', 'v5p'):
    chips = count // 2
    if chips < 4 or chips & (chips - 1):
      raise ConfigError(kind)
    x = y = z = 1
    for i in range(int(math.log2(chips))):  # grow x, y, z in turn: 2x2x1, 2x2x2, 4x2x2, ...
      if i % 3 == 0:
        x *= 2
      elif i % 3 == 1:
        y *= 2
      else:
        z *= 2
    return f'{generation}:{x}x{y}x{z}', None
  shapes = {1: '1x1', 4: '2x2', 8: '2x4', 16: '4x4', 32: '4x8', 64: '8x8', 128: '8x16',
            256: '16x16'}
  if count not in shapes:
    raise ConfigError(kind)
  return f'{generation}:{shapes[count]}', SINGLE_HOST_8 if count == 8 else None


def parse(spec: str) -> Target:
  """A `--target` string -> Target; a clear error naming the accepted forms otherwise."""
  platform, _, rest = spec.partition(':')
  if platform == 'tpu' and rest:
    if ':' in rest:  # a libtpu topology: generation:AxB[xC]
      if not re.fullmatch(r'v\d+[a-z]*:\d+x\d+(x\d+)?', rest):
        raise ConfigError(f'--target {spec}: expected tpu:GENERATION:AxB[xC], e.g. tpu:v5e:2x2')
      generation, shape = rest.split(':')
      single = generation in ('v5e', 'v6e') and shape == '2x4'
      return Target(spec, 'tpu', rest, SINGLE_HOST_8 if single else None)
    try:
      topology, per_host = _tpu_from_accelerator_type(rest)
    except ValueError:
      raise ConfigError(f'--target {spec}: unknown Cloud TPU type {rest!r}; expected e.g. v5e-8, '
                       'v5e-256, v5p-8, v6e-8, or a topology such as tpu:v5e:2x4') from None
    return Target(spec, 'tpu', topology, per_host)
  m = re.fullmatch(r'(\w+?)(?:x(\d+))?(?:x(\d+))?', rest) if platform == 'cuda' else None
  if m and m.group(1) in GPUS:
    per_host, hosts = int(m.group(2) or 1), int(m.group(3) or 1)
    return Target(spec, 'cuda', f'1x{hosts}x{per_host}', gpu=m.group(1))
  raise ConfigError(f'--target {spec}: expected tpu:TOPOLOGY (tpu:v5e:2x2), tpu:CLOUD_TYPE '
                   f'(tpu:v5e-8) or cuda:GPU[xPER_HOST[xHOSTS]] with GPU in {sorted(GPUS)} '
                   '(cuda:h100x8)')


def prepare_environment() -> None:
  """Before any jax backend starts: compile on the CPU client (nothing runs on an accelerator,
  and one that is attached stays free), let the CUDA plugin load without a GPU, and quiet
  libtpu's search for a TPU VM's metadata."""
  import jax
  if not os.environ.get('JAX_PLATFORMS'):
    jax.config.update('jax_platforms', 'cpu')
  os.environ.setdefault('JAX_SKIP_CUDA_CONSTRAINTS_CHECK', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', 'v5litepod-4')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # no TPU is opened: no lock needed


def devices(target: Target) -> list:
  """The target's devices (deviceless: they describe hardware that is not here)."""
  from jax.experimental import topologies
  if target.platform == 'tpu':
    kwargs = {'chips_per_host_bounds': target.chips_per_host} if target.chips_per_host else {}
    try:
      return list(topologies.get_topology_desc(platform='tpu', topology_name=target.topology,
                                                **kwargs).devices)
    except Exception as e:  # libtpu missing or the topology refused: one line says which
      raise RuntimeError(
          f'{target.spec}: no TPU topology {target.topology!r} ({_first_line(e)}); TPU targets '
          'need libtpu: pip install -r requirements-tpu.txt (or .[tpu])') from None
  try:
    return list(topologies.get_topology_desc(
        platform='cuda', target_config=_GPU_SPEC.format(**GPUS[target.gpu]),
        topology=target.topology).devices)
  except Exception as e:
    raise RuntimeError(f'{target.spec}: no CUDA topology ({_first_line(e)}); CUDA targets need '
                       'the jax CUDA plugin: pip install -r requirements-cuda.txt (CUDA 12, or '
                       '.[cuda12]) or -r requirements-cuda13.txt (.[cuda13])') from None


def memory_limit_bytes(target: Target, device) -> int:
  """Memory one step may use on one device: a TPU chip's HBM; on a GPU the share JAX's allocator
  takes by default (XLA_PYTHON_CLIENT_MEM_FRACTION, default 0.75)."""
  if target.platform == 'tpu':
    if device.device_kind not in TPU_HBM_GIB:
      raise RuntimeError(f'{target.spec}: HBM of {device.device_kind!r} unknown')
    return TPU_HBM_GIB[device.device_kind] * 2 ** 30
  fraction = float(os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', GPU_MEMORY_FRACTION))
  return int(GPUS[target.gpu]['memory'] * fraction)


def _first_line(e: Exception) -> str:
  lines = [l for l in str(e).splitlines() if l.strip()]
  return lines[0] if lines else type(e).__name__
