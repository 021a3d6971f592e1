r"""Compile an experiment's real train and eval steps for TPU slices and NVIDIA GPUs that are not
here, and report whether they fit, what they cost and what they communicate.

  python -m cstm_jax.analysis.aot --config=configs/ssv2_16f.py --target=tpu:v5e-8 \
      --target=cuda:h100x8 \
      --config.model.dtype=bfloat16 --max_batch=256 --json aot.json --markdown aot.md

The steps are main.py's: the same model, optimizer, state shardings and mesh (`config.mesh`)
with the config's global batch (`config.data.batch_size`, `config.data.eval_batch_size`). Per
target and step it reports devices and hosts, global and per-device batch, compile seconds
(always cold: a program compiled for devices that are not here cannot be loaded back from JAX's
persistent compilation cache, as jax 0.11 and 0.12 load an entry through a device client, so
these compiles are kept out of it instead of writing entries that a second run fails to read),
per-device memory (arguments, outputs, temporaries) against the device's memory (a TPU chip's
HBM; on a GPU the 75% JAX's allocator takes by default), whether it fits, the largest per-device
batch that fits (bisection up to `--max_batch`; 0 skips it), FLOPs per clip (XLA's cost analysis;
on CUDA targets that of the unoptimised step, which XLA:GPU does not give deviceless), the
collectives (kind, count, bytes; activations must never be all-gathered), the compiler's
estimated step time where it gives one (TPU), and the kernels, cuDNN convolution layouts and
the transposes and copies that change layouts (bytes read + written).

Exits 1, with one line per step naming the memory needed and available, when a step does not
fit. Targets: `cstm_jax/analysis/aot_targets.py` (tpu:v5e:2x2, tpu:v5e-256, tpu:v5p-8,
cuda:h100, ...).
TPU targets need libtpu (requirements-tpu.txt), CUDA targets the jax CUDA plugin
(requirements-cuda.txt); no accelerator is used either way.
"""
import dataclasses
import json
import re
import sys
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec as P

from cstm_foundation import cli_flags, paths
from cstm_foundation.errors import ConfigError
from cstm_foundation.commands import run_main
from cstm_jax.analysis import aot_targets as target_specs, hlo_stats
from cstm_jax.config import finish, loader
from cstm_jax.config.zoo import name_of
from cstm_jax.distributed import compile_cache, sharding
from cstm_jax.train import evaluation, program as program_lib, train_state

STEPS = ('train', 'eval')
GiB = 2 ** 30


@dataclasses.dataclass
class Compiled:
  """One compile's outcome; `memory` is None when the compiler refused for lack of memory and
  `needed` then holds the bytes it reported."""
  seconds: float
  memory: Optional[dict] = None
  needed: Optional[int] = None
  executable: object = None
  lowered: object = None


# --- Steps ------------------------------------------------------------------------------------

def step_builder(config, mesh, step: str) -> Callable[[int], object]:
  """global batch -> the lowered `step` ('train' or 'eval') of main.py for `config` (finished)
  on `mesh`: `program.build`'s, the experiment's optimizer included."""
  program = program_lib.build(config, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  labels = lambda n: jax.ShapeDtypeStruct((n,), jnp.int32, sharding=batch_sharding)
  frames = program.clips_shape[1:]
  if step == 'train':
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=NamedSharding(mesh, P()))

    def lower(batch: int):
      clips = jax.ShapeDtypeStruct((batch, *frames), jnp.uint8, sharding=batch_sharding)
      return program.train_step.lower(program.abstract_state,
                                      {'clips': clips, 'labels': labels(batch)}, rng)
  else:
    clips, crops, full = evaluation.parse_views(config.eval.views)
    variables = train_state.variables_of(program.abstract_state)
    side = config.data.test_scale if full else config.data.crop
    view = (frames[0], side, side, 3)

    def lower(batch: int):
      clips_abstract = jax.ShapeDtypeStruct((batch, clips * crops, *view), jnp.uint8,
                                            sharding=batch_sharding)
      return program.eval_step.lower(variables, {'clips': clips_abstract,
                                                 'labels': labels(batch)})

  return lower


# The TPU compiler refuses a program that does not fit: "Used 21.3G of 15.75G hbm" or "memory
# required for HLO temporaries (21.46G) exceeds available HBM (15.75G)".
_OOM = re.compile(r'(?:Used |required[^(]*\()([\d.]+)([KMGT]?)')


def compile_at(lower: Callable[[int], object], batch: int) -> Compiled:
  """Lowers and compiles at global `batch`; an out-of-memory refusal becomes `needed` bytes."""
  start = time.perf_counter()
  lowered = lower(batch)
  try:
    executable = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    m = _OOM.search(str(e))
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    scale = lambda v, unit: float(v) * 1024 ** ' KMGT'.index(unit or ' ')
    needed = int(scale(m.group(1), m.group(2))) if m else None
    return Compiled(time.perf_counter() - start, needed=needed, lowered=lowered)
  seconds = time.perf_counter() - start
  analysis = executable.memory_analysis()
  memory = {'arguments': analysis.argument_size_in_bytes,
            'outputs': analysis.output_size_in_bytes,
            'temporaries': analysis.temp_size_in_bytes,
            'total': (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                      + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)}
  return Compiled(seconds, memory, memory['total'], executable, lowered)


def largest_fitting(memory_at: Callable[[int], Optional[int]], limit: int,
                    known: dict[int, Optional[int]], max_batch: int) -> int:
  """Largest per-device batch b <= max_batch with memory_at(b) <= limit (0 if none), by
  bisection whose probes follow the straight line through the nearest measurements (memory grows
  about linearly with the batch, so a few compiles suffice). `known`: measured b -> bytes
  (None: did not fit)."""
  fits = lambda b: known[b] is not None and known[b] <= limit
  lo = max((b for b in known if fits(b)), default=0)
  hi = min((b for b in known if not fits(b)), default=max_batch + 1)
  while hi - lo > 1:
    guess = (lo + hi) // 2
    sized = sorted((b, m) for b, m in known.items() if m is not None)
    if len(sized) >= 2:  # secant through the two largest measured sizes
      (b0, m0), (b1, m1) = sized[-2], sized[-1]
      if m1 > m0:
        guess = b0 + int((limit - m0) * (b1 - b0) / (m1 - m0))
    guess = min(max(guess, lo + 1), hi - 1)
    known[guess] = memory_at(guess)
    if fits(guess):
      lo = guess
    else:
      hi = guess
  return lo


# --- One target -------------------------------------------------------------------------------

def analyse(config, target: target_specs.Target, steps=STEPS, *, max_batch: int = 0,
            hlo_dir: Optional[str] = None, log=print) -> list[dict]:
  """Rows of the report for `config` on `target`, one per step."""
  devices = target_specs.devices(target)
  mesh = sharding.make_mesh(config.mesh.model, devices)
  hosts = len({d.process_index for d in devices})
  limit = target_specs.memory_limit_bytes(target, devices[0])
  # Deviceless: the cache would keep entries that no later run can read (JAX warns "Error
  # reading persistent compilation cache entry ... PjRtCompiler must be constructed with a
  # Client to call DeserializeLoadedExecutable" and compiles again).
  with compile_cache.using(compile_cache.OFF):
    return [
        _analyse_step(config, target, step, mesh=mesh, devices=devices, hosts=hosts,
                      limit=limit, max_batch=max_batch, hlo_dir=hlo_dir, log=log)
        for step in steps
    ]


def _analyse_step(config, target, step, *, mesh, devices, hosts, limit, max_batch, hlo_dir,
                  log) -> dict:
  global_batch = config.data.batch_size if step == 'train' else config.data.eval_batch_size
  data_devices = mesh.shape['data']
  for divisor, what in ((data_devices, 'devices on the data axis'), (hosts, 'hosts')):
    if global_batch % divisor:
      raise ConfigError(f'{target.spec}: global {step} batch {global_batch} does not split over '
                       f'{divisor} {what}; set --config.data.'
                       f'{"batch_size" if step == "train" else "eval_batch_size"} to a multiple')
  lower = step_builder(config, mesh, step)
  log(f'{target.spec}: compiling the {step} step for {len(devices)} x {devices[0].device_kind} '
      f'({hosts} host{"s" * (hosts > 1)}), global batch {global_batch} ...')
  result = compile_at(lower, global_batch)
  row = {
      'target': target.spec, 'platform': target.platform, 'device_kind': devices[0].device_kind,
      'devices': len(devices), 'hosts': hosts, 'step': step,
      'model': name_of(config.model),
      'frames': config.model.num_frames,
      'crop': config.data.crop, 'dtype': config.model.dtype, 'global_batch': global_batch,
      'per_device_batch': global_batch // data_devices, 'compile_s': round(result.seconds, 1),
      'limit_gib': round(limit / GiB, 2),
  }
  row.update(_memory_columns(result, limit))
  if result.executable is not None:
    row.update(_cost_columns(result, config, step, devices=len(devices), global_batch=global_batch))
    stats = hlo_stats.step_stats(result.executable.as_text())
    row.update(_hlo_columns(stats, mesh, global_batch))
    if hlo_dir:
      paths.write_text(paths.resolve(hlo_dir) / f'{_slug(target.spec)}_{step}.hlo.txt',
                       result.executable.as_text())
  if max_batch:
    known = {global_batch // data_devices: result.needed}
    row['largest_per_device_batch'] = largest_fitting(
        lambda b: _probe(compile_at(lower, b * data_devices), log, step, b),
        limit, known, max_batch)
    row['largest_is_max_batch'] = row['largest_per_device_batch'] == max_batch
  log(f'  {_summary(row)}')
  return row


def _probe(result: Compiled, log, step: str, batch: int) -> Optional[int]:
  log(f'  {step} step at {batch} clips per device: '
      + ('out of memory' if result.needed is None else f'{result.needed / GiB:.2f} GiB'))
  return result.needed


def _memory_columns(result: Compiled, limit: int) -> dict:
  if result.memory is None:  # the compiler refused: out of memory
    return {'fits': False, 'memory_gib': None if result.needed is None
            else round(result.needed / GiB, 2)}
  gib = {k: round(v / GiB, 3) for k, v in result.memory.items()}
  return {'fits': result.memory['total'] <= limit, 'memory_gib': gib['total'],
          'arguments_gib': gib['arguments'], 'outputs_gib': gib['outputs'],
          'temporaries_gib': gib['temporaries']}


def _cost_columns(result: Compiled, config, step: str, *, devices: int, global_batch: int) -> dict:
  """FLOPs per clip (the compiled module is one device's partition) and the TPU compiler's
  estimated step time when it gives a positive one."""
  cost = hlo_stats.first_cost(result.executable.cost_analysis())
  if cost.get('flops'):
    gflops = cost['flops'] * devices / global_batch / 1e9
  else:
    gflops = cpu_gflops_per_clip(config, step, global_batch)
  seconds = cost.get('optimal_seconds')
  return {'gflops_per_clip': round(gflops, 3),
          'estimated_step_ms': round(1e3 * seconds, 3) if seconds and seconds > 0 else None}


def cpu_gflops_per_clip(config, step: str, batch: int) -> float:
  """XLA's FLOPs per clip of the unoptimised step lowered for one CPU device (XLA:GPU gives no
  cost analysis without a GPU); within a few percent of the optimised count."""
  mesh = sharding.make_mesh(1, jax.devices('cpu')[:1])
  lowered = step_builder(config, mesh, step)(batch)
  return hlo_stats.first_cost(lowered.cost_analysis())['flops'] / batch / 1e9


def _hlo_columns(stats, mesh, global_batch: int) -> dict:
  """Collectives and kernels; an all-gather of activations is one whose result holds whole
  batches (leading dimension a multiple of the global batch) -- with replicated parameters
  (mesh.model == 1) any all-gather is one."""
  model_axis = mesh.shape['model']
  activation_gathers = [s for s, dims in stats.all_gathers if model_axis == 1 or (
      dims.strip('{}') == '0' and _leading_dim(s) % global_batch == 0)]
  return {'collectives': stats.collectives, 'activation_all_gathers': len(activation_gathers),
          'kernels': stats.kernels, 'fusions': stats.fusions,
          'library_calls': dict(stats.library_calls), 'conv_layouts': dict(stats.conv_layouts),
          'transposes': stats.transposes, 'transpose_gb': round(stats.transpose_bytes / 1e9, 3),
          'copies': stats.copies, 'copy_gb': round(stats.copy_bytes / 1e9, 3)}


def _leading_dim(shape: str) -> int:
  m = re.search(r'\[(\d+)', shape)
  return int(m.group(1)) if m else 0


def _slug(text: str) -> str:
  return re.sub(r'[^\w.-]+', '_', text)


def _summary(row: dict) -> str:
  fits = 'fits' if row['fits'] else 'DOES NOT FIT'
  memory = '?' if row['memory_gib'] is None else f"{row['memory_gib']:.2f}"
  parts = [f"{row['step']}: {memory} of {row['limit_gib']:.2f} GiB per device, {fits}",
           f"compiled in {row['compile_s']:.1f} s"]
  if row.get('gflops_per_clip'):
    parts.append(f"{row['gflops_per_clip']:.1f} GFLOPs/clip")
  if 'largest_per_device_batch' in row:
    parts.append(f"largest batch {row['largest_per_device_batch']} per device")
  if row.get('estimated_step_ms'):
    parts.append(f"estimated {row['estimated_step_ms']:.1f} ms/step")
  return ', '.join(parts)


# --- Reports ----------------------------------------------------------------------------------

def markdown_table(rows) -> str:
  lines = ['| target | devices (hosts) | step | model | frames | dtype | batch (per device) | fits '
           '| memory / device (GiB) | args / temps (GiB) | largest batch / device | GFLOPs / clip '
           '| collectives | activation all-gathers | est. step (ms) | compile (s) | kernels '
           '| transposes (GB) | copies (GB) |', '|' + '---|' * 19]
  for r in rows:
    coll = ', '.join(f"{k} {v['count']} ({v['bytes'] / 1e6:.0f} MB)"
                     for k, v in sorted(r.get('collectives', {}).items())) or 'none'
    dash = lambda v, spec='': '-' if v is None else format(v, spec)
    lines.append(
        f"| {r['target']} | {r['devices']} ({r['hosts']}) | {r['step']} | {r['model']} "
        f"| {r['frames']} | {r['dtype']} | {r['global_batch']} ({r['per_device_batch']}) "
        f"| {'yes' if r['fits'] else '**no**'} | {dash(r['memory_gib'], '.2f')} "
        f"| {dash(r.get('arguments_gib'), '.2f')} / {dash(r.get('temporaries_gib'), '.2f')} "
        f"| {'>= ' * bool(r.get('largest_is_max_batch'))}{dash(r.get('largest_per_device_batch'))} "
        f"| {dash(r.get('gflops_per_clip'), '.1f')} "
        f"| {coll} | {dash(r.get('activation_all_gathers'))} "
        f"| {dash(r.get('estimated_step_ms'), '.1f')} | {r['compile_s']:.0f} "
        f"| {dash(r.get('kernels'))} | {dash(r.get('transposes'))} "
        f"({dash(r.get('transpose_gb'), '.2f')}) | {dash(r.get('copies'))} "
        f"({dash(r.get('copy_gb'), '.2f')}) |")
  return '\n'.join(lines)


def not_fitting_lines(rows) -> list[str]:
  return [f"{r['target']}: the {r['step']} step of {r['model']} (batch {r['global_batch']}, "
          f"{r['per_device_batch']} per device) needs "
          f"{'?' if r['memory_gib'] is None else format(r['memory_gib'], '.2f')} GiB per device; "
          f"{r['limit_gib']:.2f} GiB available" for r in rows if not r['fits']]


# --- Command line -----------------------------------------------------------------------------

def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('multi_string', 'target', None, 'tpu:TOPOLOGY (tpu:v5e:2x2), tpu:CLOUD_TYPE (tpu:v5e-8, '
         'tpu:v5p-8, tpu:v6e-8, tpu:v5e-256) or cuda:GPU[xPER_HOST[xHOSTS]] (cuda:h100, '
         'cuda:h100x8, cuda:a100x8x2); repeat for several.', required=True)
  define('list', 'steps', list(STEPS), 'Steps to compile: train, eval.')
  define('integer', 'max_batch', 0, 'Search the largest per-device batch that fits, up to this '
         '(each probe is a compile); 0 skips the search.', lower_bound=0)
  define('string', 'json', None, 'Write the rows as JSON to this file.')
  define('string', 'markdown', None, 'Write the markdown table to this file.')
  define('string', 'hlo', None, "Write each step's optimised HLO into this folder.")


def main(argv=None) -> int:
  args = loader.parse_command(argv, __doc__, define_flags)
  try:
    parsed = [target_specs.parse(t) for t in args.target]
  except ValueError as e:
    cli_flags.fail(str(e))
  if set(args.steps) - set(STEPS):
    cli_flags.fail(f'--steps {",".join(args.steps)}: choose from {", ".join(STEPS)}')
  log = lambda message: print(message, file=sys.stderr, flush=True)
  config = finish.without_data(args.config)
  rows = []
  for target in parsed:
    try:
      rows += analyse(config, target, args.steps, max_batch=args.max_batch, hlo_dir=args.hlo,
                      log=log)
    except (RuntimeError, ValueError) as e:
      log(f'error: {e}')
      return 2
    _write(rows, args)
  print(markdown_table(rows))
  failures = not_fitting_lines(rows)
  for line in failures:
    log(line)
  return 1 if failures else 0


def _write(rows, args) -> None:
  if args.json:
    paths.write_text(args.json, json.dumps(rows, indent=1) + '\n')
  if args.markdown:
    paths.write_text(args.markdown, markdown_table(rows) + '\n')


def cli() -> None:
  """The `cstm-aot` command (`python -m cstm_jax.analysis.aot`)."""
  target_specs.prepare_environment()
  sys.exit(run_main(main))


if __name__ == '__main__':
  cli()
