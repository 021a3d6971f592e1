r"""XLA throughput of the model zoo: clips/s, FLOPs, compile time and memory, on any device.

  python -m cstm_jax.analysis.benchmark --models tsn_bninception,cstm_bninception,i3d_resnet50 \
      --frames 8,16 --batch 16 --dtype bfloat16 --mode inference,train \
      --json bench.json --markdown bench.md --plot bench.png
  python -m cstm_jax.analysis.benchmark --published ...   # each model at its paper's frames x clips
  python -m cstm_jax.analysis.benchmark --config=ssv2_16f --models cstm_bninception --mode train

Each row compiles one step for a batch of `--batch` clips sharded over all local devices, then
times `--repeats` runs of `--steps` consecutive steps after `--warmup` runs, inputs already on
the device and `block_until_ready` inside the timing; clips/s is the median run's.
`inference` is the eval-mode forward; `train` is the training program's own step
(`train/program.py`: forward, backward, the optimizer update, BatchNorm statistics) with the
optimizer of `--config`'s experiment (parameter groups, clipping, accumulation), or of the base
config (GSM's recipe) without one; each row names it (`train_config`). The variables are
random at the scale of the initialisers (`models.build.random_variables`): their values do not
change the speed, and compiling the real initialisers would cost seconds per row. `gflops` is
XLA's cost analysis of the step per clip (train counts forward and backward): on TPUs of the
compiled step; on GPUs, whose compiled count leaves out the cuDNN and cuBLAS calls, and CPUs,
whose block-diagonal grouped convs would count their zeros, of the step lowered for one device
with native grouped convs (`temporal_ops.native_grouped_convs`). `memory_gb` is XLA's buffer
assignment of the step per device (arguments + outputs + temporaries - donated buffers).
A crop that breaks a backbone's shapes (Inception v3 needs 229 rather than 224) is raised to the
nearest crop that fits, and the row says which crop ran. A clip is one view: a video evaluated
with V clips costs V clips, so `videos_per_s` = clips/s / V.
"""
import copy
import dataclasses
import json
import statistics
import sys
import time
import types
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from absl import flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.commands import run_main
from cstm_foundation.progress import format_seconds
from cstm_jax.analysis import hlo_stats
from cstm_jax.analysis.summary import count_params
from cstm_jax.config import defaults, finish, loader
from cstm_jax.config.defaults import model_config
from cstm_jax.config.zoo import BACKBONES, MODELS, check_model_names
from cstm_jax.distributed import compile_cache, sharding
from cstm_jax.models import temporal_ops
from cstm_jax.models.build import abstract_variables, build_model, random_variables
from cstm_jax.train import program as program_lib

MODES = ('inference', 'train')
DTYPES = ('float32', 'bfloat16')
REFERENCE = 'cstm_bninception'  # the markdown table gives every row's throughput relative to it

# Frames x clips per video that each paper evaluated with (and timed, for TSM vs I3D).
PUBLISHED = {
    'cstm_bninception': (8, 1),   # CSTM: 8 frames x 1 clip
    'tsn_bninception': (8, 1),
    'gsm_bninception': (8, 1),    # GSM: 8 frames x 1 clip
    'tsn_resnet50': (8, 1),
    'tsm_resnet50': (8, 1),       # TSM-8F, timed at 77.4 videos/s on a P100 (batch 16)
    'i3d_resnet50': (32, 2),      # I3D-R50 32 frames x 2 clips, timed at 6.1 videos/s there
    'trn_bninception': (8, 1),    # TRN multiscale 8 frames, as CSTM's comparison table
    's3dg': (64, 1),              # S3D-G 64 frames
    'stm_resnet50': (8, 1),       # STM 8 frames
}

# Dense bfloat16 peak TFLOP/s of one device, by a lower-case fragment of its `device_kind`
# (first match wins). float32 peaks depend on the matmul precision XLA picks: pass --peak_tflops.
PEAK_BF16_TFLOPS = (
    ('h100 pcie', 756.0), ('h100', 989.4), ('h200', 989.4), ('gh200', 989.4), ('a100', 312.0),
    ('l4', 121.0), ('tpu v6 lite', 918.0), ('tpu v5 lite', 197.0), ('tpu v5', 459.0),
    ('tpu v4', 275.0),
)


@dataclasses.dataclass(frozen=True)
class Setting:
  model: str
  frames: int
  crop: int
  batch: int
  dtype: str
  mode: str
  views: int = 1
  width: float = 1.0
  shift_impl: str = 'roll'
  gpu_conv_nhwc: bool = False
  setting: str = 'matched'  # 'matched' (the given frames) or 'published' (PUBLISHED)


def known_peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  if dtype != 'bfloat16':
    return None
  kind = device_kind.lower()
  return next((peak for fragment, peak in PEAK_BF16_TFLOPS if fragment in kind), None)


def fitting_crop(name: str, crop: Optional[int], frames: int, max_raise: int = 40) -> int:
  """`crop` (default: the backbone's native crop) or the nearest larger crop whose shapes fit."""
  crop = crop or BACKBONES[MODELS[name]['backbone']].crop
  model = build_model(model_config(name, num_frames=frames, width=0.25))
  for candidate in range(crop, crop + max_raise):
    try:
      abstract_variables(model, jax.ShapeDtypeStruct((1, frames, candidate, candidate, 3),
                                                     jnp.float32))
      return candidate
    except (ValueError, TypeError):
      continue
  raise ValueError(f'{name}: no crop between {crop} and {crop + max_raise - 1} fits its shapes')


# --- Steps ------------------------------------------------------------------------------------

def _random_batch(shape, mesh, num_classes: int, seed: int = 0) -> dict:
  """uint8 clips (as the pipelines send them) and labels, generated on the devices with the
  batch sharding."""
  batch_sharding = sharding.batch_sharding(mesh)

  def make(key):
    clip_key, label_key = jax.random.split(key)
    return {'clips': jax.random.bits(clip_key, shape, jnp.uint8),
            'labels': jax.random.randint(label_key, shape[:1], 0, num_classes)}

  return jax.jit(make, out_shardings=batch_sharding)(jax.random.key(seed))


def setting_config(setting: Setting, experiment=None) -> ml_collections.ConfigDict:
  """The finished config a row runs: the named model at the setting's frames, dtype, width and
  shift; its batch and crop; and the optimizer, mesh and XLA settings of `experiment` (a config;
  default: the base config, the GSM recipe)."""
  config = defaults.get_config() if experiment is None else copy.deepcopy(experiment)
  config.model.update(model_config(setting.model, num_frames=setting.frames, dtype=setting.dtype,
                                   width=setting.width, shift_impl=setting.shift_impl).to_dict())
  config.data.update(num_frames=setting.frames, batch_size=setting.batch,
                     eval_batch_size=setting.batch, crop=setting.crop)
  config.xla.gpu_conv_nhwc = setting.gpu_conv_nhwc
  return finish.without_data(config)


def inference_step(program):
  """(lowered eval-mode forward of `program`, runner): `runner(compiled)` is a call of it on a
  batch already on the devices. Logits stay sharded over the batch, as a serving loop would
  leave them."""
  replicated = jax.sharding.NamedSharding(program.mesh, jax.sharding.PartitionSpec())
  variables = jax.device_put(random_variables(program.model, program.one_clip()), replicated)
  batch = _random_batch(program.clips_shape, program.mesh, program.config.model.num_classes)
  lowered = program.forward.lower(variables, batch['clips'])
  return lowered, lambda compiled: (lambda: compiled(variables, batch['clips']))


def train_step(program):
  """(lowered train step of `program`, runner): a full step of the experiment's optimizer
  (gradient, clipping, weight decay, parameter groups, BatchNorm statistics); the state threads
  through successive calls."""
  state = program.state_with(random_variables(program.model, program.one_clip()))
  batch = _random_batch(program.clips_shape, program.mesh, program.config.model.num_classes)
  rng = jax.random.key(1)
  lowered = program.train_step.lower(state, batch, rng)
  holder = {'state': state}

  def runner(compiled):
    def run():
      holder['state'], metrics = compiled(holder['state'], batch, rng)
      return holder['state'], metrics  # both: the timing waits for the parameter update too
    return run

  return lowered, runner


# --- Measurement ------------------------------------------------------------------------------

def median_seconds(run: Callable[[], object], warmup: int, repeats: int, steps: int) -> float:
  """Median wall time of `repeats` runs of `steps` consecutive calls, device work included."""
  for _ in range(warmup):
    jax.block_until_ready(run())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      out = run()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def unoptimised_gflops_per_clip(mode: str, config) -> float:
  """XLA's FLOPs per clip of the `mode` step ('inference' or 'train') of `config`, lowered (not
  compiled) from abstract inputs for one CPU device, its grouped convs as GPUs run them
  (`temporal_ops.native_grouped_convs`)."""
  program = program_lib.build(config, sharding.make_mesh(1, jax.devices('cpu')[:1]))
  clips = jax.ShapeDtypeStruct(program.clips_shape, jnp.uint8)
  with temporal_ops.native_grouped_convs():
    if mode == 'inference':
      variables = abstract_variables(program.model, program.one_clip())
      lowered = program.forward.lower(variables, clips)
    else:
      labels = jax.ShapeDtypeStruct(program.clips_shape[:1], jnp.int32)
      lowered = program.train_step.lower(program.abstract_state,
                                         {'clips': clips, 'labels': labels}, jax.random.key(1))
  return hlo_stats.first_cost(lowered.cost_analysis())['flops'] / program.clips_shape[0] / 1e9


_UNOPTIMISED_GFLOPS = {}  # Setting (layout and view count left out) -> GFLOPs per clip


def measure(setting: Setting, warmup: int = 2, repeats: int = 5, *, steps: int = 5,
            peak_tflops: Optional[float] = None, hlo_dir: Optional[str] = None,
            experiment=None, experiment_name: str = 'the base config') -> dict:
  """One row: parameters, XLA FLOPs and memory, compile time and throughput of `setting`, its
  train step that of `experiment` (`setting_config`; named `experiment_name` in the row); the
  optimised HLO of the step is written into `hlo_dir` when given."""
  config = setting_config(setting, experiment)
  program = program_lib.build(config, program_lib.make_mesh(config, jax.local_devices()))
  mesh, model = program.mesh, program.model
  make = inference_step if setting.mode == 'inference' else train_step
  lowered, runner = make(program)
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start

  hlo = compiled.as_text()
  stats = hlo_stats.step_stats(hlo)
  if hlo_dir:
    name = f'{setting.model}_{setting.frames}f_{setting.crop}px_{setting.dtype}_{setting.mode}'
    paths.write_text(paths.resolve(hlo_dir) / f'{name}.hlo.txt', hlo)
  seconds = median_seconds(runner(compiled), warmup, repeats, steps)
  clips_per_s = setting.batch * steps / seconds
  # XLA:GPU's compiled count leaves out cuDNN and cuBLAS calls; XLA:CPU's counts the zeros of
  # CSTM's block-diagonal convs. Both count the step as lowered for one device instead.
  if mesh.devices.flat[0].platform in ('gpu', 'cpu'):
    # Traced once per setting: the layout option changes the compile, not the lowered step.
    key = (dataclasses.replace(setting, gpu_conv_nhwc=False, views=1, setting=''),
           experiment_name)
    if key not in _UNOPTIMISED_GFLOPS:
      _UNOPTIMISED_GFLOPS[key] = unoptimised_gflops_per_clip(setting.mode, config)
    gflops = _UNOPTIMISED_GFLOPS[key]
  else:  # the compiled module is one device's partition of the step
    flops = hlo_stats.first_cost(compiled.cost_analysis())['flops']
    gflops = flops * mesh.devices.size / setting.batch / 1e9
  memory = compiled.memory_analysis()
  memory_gb = None if memory is None else (
      memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
      - memory.alias_size_in_bytes) / 2 ** 30
  device = jax.local_devices()[0]
  peak = peak_tflops or known_peak_tflops(device.device_kind, setting.dtype)
  achieved = gflops * clips_per_s / 1e3
  params = count_params(abstract_variables(model, program.one_clip()))
  return {
      **dataclasses.asdict(setting),
      'train_config': experiment_name,
      'params': params,
      'gflops': round(gflops, 6),
      'compile_s': round(compile_s, 2),
      'clips_per_s': round(clips_per_s, 3),
      'videos_per_s': round(clips_per_s / setting.views, 3),
      'step_ms': round(1e3 * seconds / steps, 3),
      'achieved_tflops': round(achieved, 4),
      'peak_tflops': None if peak is None else peak * mesh.devices.size,
      'fraction_of_peak': None if peak is None else round(achieved / (peak * mesh.devices.size),
                                                          4),
      'memory_gb': None if memory_gb is None else round(memory_gb, 3),
      'kernels': stats.kernels,
      'transpose_gb': round(stats.transpose_bytes / 1e9, 3),
      'device': f'{mesh.devices.size} x {device.device_kind} ({device.platform})',
      'jax': jax.__version__,
  }


# --- Reports ----------------------------------------------------------------------------------

def with_reference_ratios(rows: Sequence[dict], reference: str = REFERENCE) -> list[dict]:
  """Adds `vs_reference`: videos/s over the reference model's at the same frames (matched) or
  at its own published setting (published), same mode, dtype and batch."""
  key = lambda r: (r['mode'], r['dtype'], r['batch'], r['setting'],
                   r['frames'] if r['setting'] == 'matched' else None)
  refs = {key(r): r['videos_per_s'] for r in rows if r['model'] == reference and
          r.get('videos_per_s')}
  out = []
  for r in rows:
    ref = refs.get(key(r))
    ratio = r['videos_per_s'] / ref if ref and r.get('videos_per_s') else None
    out.append({**r, 'vs_reference': None if ratio is None else round(ratio, 3)})
  return out


def _fmt(value, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def markdown_table(rows: Sequence[dict], reference: str = REFERENCE) -> str:
  lines = [f'| model | frames x clips | crop | batch | dtype | mode | params (M) | GFLOPs / clip '
           f'| compile (s) | clips/s | videos/s | vs {reference} | TFLOP/s | % of peak '
           f'| memory (GiB) | kernels | transposes (GB) |', '|' + '---|' * 17]
  for r in with_reference_ratios(rows, reference):
    if r.get('error'):
      lines.append(f"| {r['model']} | {r['frames']} x {r['views']} | {r['crop']} | {r['batch']} "
                   f"| {r['dtype']} | {r['mode']} | failed: {r['error'][:60]} |" + ' |' * 11)
      continue
    fraction = r['fraction_of_peak']
    lines.append(
        f"| {r['model']} | {r['frames']} x {r['views']} | {r['crop']} | {r['batch']} "
        f"| {r['dtype']} | {r['mode']} | {r['params'] / 1e6:.2f} | {r['gflops']:.2f} "
        f"| {r['compile_s']:.1f} | {r['clips_per_s']:.2f} | {r['videos_per_s']:.2f} "
        f"| {_fmt(r['vs_reference'], '.2f')} | {r['achieved_tflops']:.3f} "
        f"| {_fmt(None if fraction is None else 100 * fraction, '.1f')} "
        f"| {_fmt(r['memory_gb'], '.2f')} | {_fmt(r.get('kernels'), '')} "
        f"| {_fmt(r.get('transpose_gb'), '.2f')} |")
  return '\n'.join(lines)


# --- Command line -----------------------------------------------------------------------------

def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('list', 'models', None, f'Model names (default: all): {", ".join(MODELS)}.')
  define('list', 'frames', ['8', '16'], 'Frames per clip.')
  define('bool', 'published', False, 'Run each model at its published frames x clips instead '
         'of --frames: ' + ', '.join(f'{m} {f}x{v}' for m, (f, v) in PUBLISHED.items()) + '.')
  define('integer', 'views', 1, 'Clips per video (for videos/s).', lower_bound=1)
  define('integer', 'batch', 16, 'Clips per step, over all devices.', lower_bound=1)
  define('integer', 'crop', None, "Crop size (default: each backbone's own).", lower_bound=1)
  define('list', 'dtype', ['float32'], f'Compute dtype(s): {", ".join(DTYPES)}.')
  define('list', 'mode', ['inference'], f'Mode(s): {", ".join(MODES)}.')
  define('float', 'width', 1.0, 'Channel multiplier (tests).', lower_bound=0.0)
  define('enum', 'shift_impl', 'roll', ['roll', 'slice'], 'Temporal shift implementation.')
  define('bool', 'gpu_conv_nhwc', False, 'GPUs: force channels-last convolutions (XLA:GPU runs '
         '3D convs NCDHW); config key xla.gpu_conv_nhwc; no effect elsewhere.')
  define('integer', 'warmup', 2, 'Untimed runs.', lower_bound=0)
  define('integer', 'repeats', 5, 'Timed runs (the median counts).', lower_bound=1)
  define('integer', 'steps', 5, 'Steps per run.', lower_bound=1)
  define('float', 'peak_tflops', None, 'Peak TFLOP/s of one device (default: known for '
         'bfloat16 on common GPUs and TPUs).', lower_bound=0.0)
  define('string', 'json', None, 'Write the rows as a JSON list to this file.')
  define('string', 'markdown', None, 'Write the markdown table to this file.')
  define('string', 'plot', None, 'Write clips/s against GFLOPs per clip to this PNG.')
  define('string', 'hlo', None, "Write each step's optimised HLO into this folder.")
  define('string', 'compile_cache', 'off', "JAX's persistent compilation cache for the compiles: "
         "a folder, or 'off' (the default: compile_s is then a cold compile).")


def parse_args(argv: Optional[Sequence[str]] = None) -> types.SimpleNamespace:
  """The command line's settings, checked: model names known, frames numbers, dtypes and modes
  from their lists; `experiment` and `experiment_name` from the optional `--config`."""
  flag_values = loader.parse_command(
      argv, __doc__, define_flags, config_required=False,
      config_help="An experiment whose optimizer (parameter groups, clipping, accumulation), "
      "mesh and XLA settings every row's train step uses; default: the base config (GSM's "
      'recipe).')
  experiment, name = loader.from_flag(flag_values)
  args = types.SimpleNamespace(**flag_values.flag_values_dict())
  args.experiment, args.experiment_name = experiment, (name if experiment is not None
                                                        else 'the base config')
  try:
    args.models = check_model_names(args.models or MODELS)
    args.frames = [int(f) for f in args.frames]
  except ValueError as e:
    cli_flags.fail(str(e))
  for name, values, valid in (('dtype', args.dtype, DTYPES), ('mode', args.mode, MODES)):
    if not values or set(values) - set(valid):
      cli_flags.fail(f'--{name} {",".join(values)}: choose from {", ".join(valid)}')
  if args.published and set(args.models) - set(PUBLISHED):
    cli_flags.fail(f'no published setting for {sorted(set(args.models) - set(PUBLISHED))}; '
                   f'--published knows {", ".join(PUBLISHED)}')
  return args


def settings(args) -> list[Setting]:
  out = []
  for name in args.models:
    points = [PUBLISHED[name]] if args.published else [(f, args.views) for f in args.frames]
    for frames, views in points:
      crop = fitting_crop(name, args.crop, frames)
      if args.crop and crop != args.crop:
        print(f'{name}: --crop {args.crop} does not fit its shapes; measuring at {crop}',
              file=sys.stderr, flush=True)
      for dtype in args.dtype:
        for mode in args.mode:
          out.append(Setting(name, frames, crop, args.batch, dtype, mode, views, args.width,
                             args.shift_impl, args.gpu_conv_nhwc,
                             'published' if args.published else 'matched'))
  return out


def write_reports(rows: Sequence[dict], args) -> None:
  rows = with_reference_ratios(rows)
  if args.json:
    paths.write_text(args.json, json.dumps(rows, indent=1) + '\n')
  if args.markdown:
    paths.write_text(args.markdown, markdown_table(rows) + '\n')
  if args.plot:
    from cstm_jax.train import plots
    plots.throughput(rows, args.plot)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  todo = settings(args)
  device = jax.local_devices()[0]
  print(f'benchmarking {len(todo)} settings on {jax.local_device_count()} x '
        f'{device.device_kind} (jax {jax.__version__}); train steps use the optimizer of '
        f'{args.experiment_name}', file=sys.stderr, flush=True)
  with compile_cache.using(args.compile_cache):  # 'off' by default: compile_s is cold
    rows = run_settings(todo, args)
  print(markdown_table(rows))
  return 0


def run_settings(todo: Sequence[Setting], args) -> list[dict]:
  rows, start = [], time.monotonic()
  for i, setting in enumerate(todo, 1):
    print(f'[{i}/{len(todo)}] {setting.model} {setting.frames}x{setting.views} crop '
          f'{setting.crop} {setting.dtype} {setting.mode} ...', end=' ', file=sys.stderr,
          flush=True)
    try:
      row = measure(setting, args.warmup, args.repeats, steps=args.steps,
                    peak_tflops=args.peak_tflops, hlo_dir=args.hlo,
                    experiment=args.experiment, experiment_name=args.experiment_name)
    except jax.errors.JaxRuntimeError as e:  # out of memory and the like: report, go on
      row = {**dataclasses.asdict(setting), 'error': str(e).splitlines()[0]}
      print(f'failed: {row["error"]}', file=sys.stderr)
    else:
      elapsed = time.monotonic() - start
      print(f'{row["clips_per_s"]:.2f} clips/s, {row["gflops"]:.3g} GFLOPs/clip, compiled in '
            f'{row["compile_s"]:.1f} s (ETA {format_seconds(elapsed / i * (len(todo) - i))})',
            file=sys.stderr, flush=True)
    rows.append(row)
    write_reports(rows, args)  # after every row: an interrupted run keeps what it measured
  return rows


def cli() -> int:
  """The `cstm-benchmark` command (`python -m cstm_jax.analysis.benchmark`)."""
  return run_main(main)


if __name__ == '__main__':
  sys.exit(cli())
