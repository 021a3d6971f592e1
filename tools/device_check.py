"""The one-call device check: what a user's run gets on this host's accelerator, part by part.

  python -m tools.device_check --out docs/bench      # make device-check; about 9 min
  python -m tools.device_check --smoke --out /tmp/x  # every part at tiny sizes, a CPU

Writes `OUT/device_<device>.json` and `.md` (`device_<device>_smoke.*` with `--smoke`) after
every measurement, so a run cut short keeps what it measured. The parts, in the order they run,
each within its own time budget (`BUDGET_S`, scaled to `--budget_s`):

  layout      `conv_layout_check`: channels-last convolutions against the default layouts, every
              array that differs named, with whether its gradient is zero. Where it holds on a
              GPU, main.py below runs with channels-last convolutions.
  end_to_end  main.py as a user runs it: synthetic SSv1-format data (JPEG frame folders over
              textured, moving backgrounds, prepared at short side 256 like real SSv2 frames)
              made and prepared on this host's cores; CSTM BN-Inception 8F in bfloat16 at a
              per-device batch of 64 for a few hundred steps and one evaluation, with a fresh
              compilation cache; steady-state clips/s and input wait from the run's
              metrics.jsonl; then the same command resumed for more steps, its train-step
              compile time warm against the first run's cold one.
  loader      the training loader's clips/s on those frames with 0, 1, 2, 4, 8 and all-core
              worker processes.
  steps       the benchmark's train step of CSTM and TSN at per-device batch 64, 128 and 256,
              channels-last on and off, 8 frames, and CSTM at 16 frames, most important first
              (CSTM at 64 with the default layout, the step main.py ran, comes first), while
              the budget lasts. The compiles share main.py's compilation cache folder, so
              cuDNN's autotuning of a convolution main.py compiled is not repeated.

This process lists the devices through a child process, and grows its GPU memory as it needs it
rather than taking most of it at once, so main.py, run while it lives, gets its usual share.
"""
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Optional

from absl import flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.errors import first_line
from cstm_foundation.commands import run_main
from input_pipeline import workers

ROOT = pathlib.Path(__file__).resolve().parents[1]
PARTS = ('layout', 'end_to_end', 'loader', 'steps')
BUDGET_S = {'layout': 70, 'end_to_end': 250, 'loader': 50, 'steps': 160}  # 530 s in all
# This process grows its GPU memory as it needs it (a few GiB for the layout check), so that
# main.py, run while it lives, takes its usual share.
PREALLOCATE = 'XLA_PYTHON_CLIENT_PREALLOCATE'
_set_preallocate = False  # main() set PREALLOCATE (not the user): main.py runs without it


@dataclasses.dataclass(frozen=True)
class Sizes:
  config: str           # the main.py config
  train_videos: int
  val_videos: int
  video_height: int     # synthetic frames' height
  short_side: int       # prepared frames' short side
  background: str
  per_device_batch: int
  steps: int            # first run
  more_steps: int       # the resumed run's extra steps
  log_every: int
  loader_batch: int
  loader_batches: int
  loader_frames: int
  loader_crop: int
  step_batches: tuple   # per device
  step_frames: tuple    # CSTM's second frame count, if any, is step_frames[1]
  step_width: float
  step_crop: Optional[int]
  step_dtype: str
  layout: dict          # conv_layout_check.check arguments


FULL = Sizes(config='configs/ssv1_8f.py', train_videos=512, val_videos=128, video_height=240,
             short_side=256, background='texture', per_device_batch=64, steps=300, more_steps=40,
             log_every=25, loader_batch=16, loader_batches=40, loader_frames=8, loader_crop=224,
             step_batches=(64, 128, 256), step_frames=(8, 16), step_width=1.0, step_crop=None,
             step_dtype='bfloat16',
             layout=dict(model_name='cstm_bninception', width=0.25, frames=4, crop=224,
                         batch_size=2))
SMOKE = Sizes(config='configs/ssv1_8f.py:smoke', train_videos=16, val_videos=8, video_height=32,
              short_side=40, background='flat', per_device_batch=2, steps=6, more_steps=2,
              log_every=2, loader_batch=4, loader_batches=3, loader_frames=4, loader_crop=32,
              step_batches=(2,), step_frames=(4,), step_width=0.125, step_crop=32,
              step_dtype='float32',
              layout=dict(model_name='cstm_bninception', width=0.125, frames=4, crop=32,
                          batch_size=2))


# --- The report -------------------------------------------------------------------------------

class Report:
  """The JSON report and its markdown, rewritten whole after every measurement."""

  def __init__(self, out: pathlib.Path, name: str, header: dict):
    self.json_path, self.md_path = out / f'{name}.json', out / f'{name}.md'
    self.data = {**header, 'parts': {}}
    self.save()

  def part(self, name: str) -> dict:
    return self.data['parts'].setdefault(name, {'status': 'running'})

  def save(self) -> None:
    paths.write_text(self.json_path, json.dumps(self.data, indent=1) + '\n')
    paths.write_text(self.md_path, markdown(self.data))


class Deadline:
  def __init__(self, seconds: float):
    self.end = time.monotonic() + seconds

  def left(self) -> float:
    return max(0.0, self.end - time.monotonic())


# --- Host and device --------------------------------------------------------------------------

def _run(command, timeout: float, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
  return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def probe_devices() -> dict:
  """The accelerator as a child process sees it, so this one does not hold it."""
  code = ('import json, jax, jaxlib; d = jax.local_devices(); print(json.dumps({"count": len(d), '
          '"kind": d[0].device_kind, "platform": d[0].platform, "jax": jax.__version__, '
          '"jaxlib": jaxlib.__version__}))')
  done = _run([sys.executable, '-c', code], timeout=300)
  if done.returncode:
    raise RuntimeError(f'jax could not list the devices: {done.stderr.strip()[-400:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])


def nvidia_driver() -> Optional[dict]:
  if not shutil.which('nvidia-smi'):
    return None
  done = _run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
               '--format=csv,noheader'], timeout=30)
  if done.returncode or not done.stdout.strip():
    return None
  name, driver, memory = [p.strip() for p in done.stdout.strip().splitlines()[0].split(',')]
  return {'name': name, 'driver': driver, 'memory': memory}


def slug(kind: str) -> str:
  return re.sub(r'[^a-z0-9]+', '_', kind.lower()).strip('_') or 'device'


# --- Part: main.py end to end -----------------------------------------------------------------

COMPILED = re.compile(r'Compiled the train step and ran it once in ([\d.]+) s \(([^;)]*)')


def prepare_data(work: pathlib.Path, sizes: Sizes) -> dict:
  """Synthetic SSv1-format frame folders made and prepared with every core; returns the
  prepare report with the times."""
  from input_pipeline import prepare, synthetic
  cores = workers.usable_cores()
  start = time.monotonic()
  synthetic.generate(work / 'manual', train=sizes.train_videos, val=sizes.val_videos, test=0,
                     size=sizes.video_height, seed=0, fmt='frames', layout='ssv1', workers=cores,
                     background=sizes.background)
  made = time.monotonic() - start
  report = prepare.prepare('ssv1', work / 'manual', work / 'data', workers=cores,
                           short_side=sizes.short_side)
  return {'videos': report['videos_written'], 'generate_s': round(made, 1),
          'prepare_s': report['seconds'], 'workers': cores,
          'jpeg_kib_per_frame': round(report['bytes'] / max(1, report['frames']) / 1024, 1),
          'frames_per_video': round(report['frames'] / max(1, report['videos_written']), 1)}


def train_command(sizes: Sizes, work: pathlib.Path, devices: int, *, max_steps: int,
                  nhwc: bool = False) -> list[str]:
  """The main.py command of the end-to-end part (`python -m cstm_jax.main` is `main.py`)."""
  batch = sizes.per_device_batch * devices
  steps_per_epoch = max(1, sizes.train_videos // batch)
  epochs = math.ceil((sizes.steps + sizes.more_steps) / steps_per_epoch) + 1
  return [sys.executable, '-m', 'cstm_jax.main', f'--config={ROOT / sizes.config}',
          f'--workdir={work / "run"}', f'--config.data.data_dir={work / "data"}',
          '--config.model.num_classes=0', f'--config.data.batch_size={batch}',
          f'--config.data.eval_batch_size={batch}', f'--config.optim.epochs={epochs}',
          f'--config.train.max_steps={max_steps}',
          '--config.train.init_from=scratch',  # the GPU host has no internet; speed only
          f'--config.train.log_every_steps={sizes.log_every}',
          f'--config.train.checkpoint_every_steps={max_steps}',
          '--config.train.eval_every_epochs=1000000', '--config.eval.final_views=1x1',
          '--config.eval.tsne_examples=64', f'--config.xla.cache_dir={work / "xla_cache"}',
          f'--config.xla.gpu_conv_nhwc={nhwc}']


def run_training(command, timeout: float) -> dict:
  """One main.py run: its exit status, wall time, the train step's compile line, log tail. A run
  past `timeout` is killed with its loader processes."""
  start = time.monotonic()
  env = {**os.environ, 'PYTHONPATH': os.pathsep.join(
      [str(ROOT)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p])}
  if _set_preallocate:
    env.pop(PREALLOCATE, None)
  with tempfile.TemporaryFile('w+') as log_file:
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
      code = process.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
      code = 'killed at the budget'
    log_file.seek(0)
    log = log_file.read()
  match = COMPILED.search(log)
  return {'exit': code, 'wall_s': round(time.monotonic() - start, 1),
          'compile_s': float(match.group(1)) if match else None,
          'compile_cache': match.group(2) if match else None,
          'log_tail': log.strip().splitlines()[-12:]}


def steady_state(metrics: list[dict], after_step: int = 0) -> dict:
  """Median clips/s and input wait of the logged windows after the first, of steps after
  `after_step` (the first window can hold the loader's start)."""
  windows = [m for m in metrics if 'clips_per_s' in m and m['step'] > after_step]
  steady = windows[1:] or windows
  if not steady:
    return {}
  return {'windows': len(steady),
          'clips_per_s': round(statistics.median(m['clips_per_s'] for m in steady), 1),
          'input_wait_fraction': round(statistics.median(
              m.get('input_wait_fraction', 0.0) for m in steady), 4)}


def part_end_to_end(part: dict, report: Report, sizes: Sizes, *, work: pathlib.Path, devices: int,
                    deadline: Deadline, nhwc: bool) -> None:
  part['data'] = prepare_data(work, sizes)
  part['gpu_conv_nhwc'], part['per_device_batch'] = nhwc, sizes.per_device_batch
  report.save()
  first = train_command(sizes, work, devices, max_steps=sizes.steps, nhwc=nhwc)
  part['command'] = ('python ' + ' '.join(first[1:])).replace(str(work), 'WORK').replace(
      str(ROOT) + '/', '')
  part['cold'] = run_training(first, deadline.left())
  report.save()
  from cstm_jax.train.writer import read_metrics
  part['cold'].update(steady_state(read_metrics(work / 'run')))
  final = work / 'run' / 'final_metrics.json'
  if final.exists():
    part['final_eval'] = json.loads(final.read_text())['1x1']
  report.save()
  if part['cold']['exit'] != 0:
    part['status'] = 'failed'
    return
  again = train_command(sizes, work, devices, max_steps=sizes.steps + sizes.more_steps, nhwc=nhwc)
  part['warm'] = run_training(again, deadline.left())
  part['warm'].update(steady_state(read_metrics(work / 'run'), after_step=sizes.steps))
  cold, warm = part['cold']['compile_s'], part['warm']['compile_s']
  if cold and warm:
    part['warm_over_cold'] = round(warm / cold, 3)
  part['status'] = 'done' if part['warm']['exit'] == 0 else 'failed'


# --- Part: the loader -------------------------------------------------------------------------

def part_loader(part: dict, report: Report, sizes: Sizes, *, work: pathlib.Path,
                deadline: Deadline) -> None:
  from input_pipeline import loader_benchmark as input_benchmark, builders
  if not (work / 'data').exists():
    part['data'] = prepare_data(work, sizes)
  cores = workers.usable_cores()
  counts = sorted({c for c in (0, 1, 2, 4, 8, cores) if c <= cores})
  part.update(cores=cores, frames=sizes.loader_frames, crop=sizes.loader_crop,
              batch=sizes.loader_batch, rows=[])
  for count in counts:
    if deadline.left() <= 0:
      part['status'] = 'cut short by its budget'
      return
    config = input_benchmark.loader_config(
        name=builders.BUILDERS['ssv1'].name, data_dir=str(work / 'data'),
        frames=sizes.loader_frames, crop=sizes.loader_crop, batch=sizes.loader_batch,
        workers=count)
    rate = input_benchmark.time_loader(config, sizes.loader_batches)
    part['rows'].append({'workers': count, 'clips_per_s': round(rate, 1),
                         'clips_per_s_per_process': round(rate / max(count, 1), 1)})
    report.save()
  part['status'] = 'done'


# --- Part: the layout check -------------------------------------------------------------------

def part_layout(part: dict, report: Report, sizes: Sizes) -> None:
  from tools import conv_layout_check
  result = conv_layout_check.check(**sizes.layout)
  part.update({k: v for k, v in result.items() if k != 'rows'})
  part['lines'] = conv_layout_check.report_lines(result)
  part['status'] = 'done'


# --- Part: train steps ------------------------------------------------------------------------

def step_settings(sizes: Sizes, devices: int) -> list:
  """The benchmark settings of the steps part, most important first."""
  from cstm_jax.analysis.benchmark import Setting
  eight, *more = sizes.step_frames
  first, *rest = sizes.step_batches
  make = lambda model, frames, batch, nhwc: Setting(
      model, frames, sizes.step_crop or 224, batch * devices, sizes.step_dtype, 'train',
      width=sizes.step_width, gpu_conv_nhwc=nhwc)
  order = [('cstm_bninception', eight, first, False), ('cstm_bninception', eight, first, True),
           ('tsn_bninception', eight, first, False), ('tsn_bninception', eight, first, True)]
  order += [(m, eight, b, True) for b in rest for m in ('cstm_bninception', 'tsn_bninception')]
  order += [('cstm_bninception', f, first, nhwc) for f in more for nhwc in (True, False)]
  order += [(m, eight, b, False) for b in rest for m in ('cstm_bninception', 'tsn_bninception')]
  return [make(*o) for o in order]


def part_steps(part: dict, report: Report, sizes: Sizes, *, devices: int, deadline: Deadline,
               smoke: bool, cache_dir: str) -> None:
  from cstm_jax.analysis import benchmark
  from cstm_jax.distributed import compile_cache
  part['rows'], part['skipped'], part['compile_cache'] = [], [], cache_dir
  with compile_cache.using(cache_dir):
    _measure_steps(part, report, sizes, devices=devices, deadline=deadline, smoke=smoke,
                   benchmark=benchmark)
  part['status'] = 'done' if not part['skipped'] else 'cut short by its budget'


def _measure_steps(part, report, sizes, *, devices, deadline, smoke, benchmark) -> None:
  cost = {}  # model -> seconds its last row took
  for setting in step_settings(sizes, devices):
    guess = cost.get(setting.model, 0.0)
    if deadline.left() <= max(guess, 1.0):
      part['skipped'].append(_setting_name(setting))
      continue
    start = time.monotonic()
    try:
      row = benchmark.measure(setting, warmup=1 if smoke else 2, repeats=1 if smoke else 5,
                              steps=1 if smoke else 5)
    except Exception as e:  # out of memory and the like: recorded, the next row runs
      row = {**dataclasses.asdict(setting), 'error': first_line(e)}
    cost[setting.model] = time.monotonic() - start
    row['per_device_batch'] = setting.batch // devices
    part['rows'].append(row)
    report.save()


def _setting_name(s) -> str:
  return (f'{s.model} {s.frames}f batch {s.batch} '
          f'{"channels-last" if s.gpu_conv_nhwc else "default layout"}')


# --- Markdown ---------------------------------------------------------------------------------

def _fmt(value, spec='.1f') -> str:
  return '-' if value is None else format(value, spec)


def markdown(data: dict) -> str:
  parts = data['parts']
  lines = [f"# Device check: {data['device']}", '',
           f"{data['devices']} x {data['device']} ({data['platform']}), driver "
           f"{data.get('driver') or '-'}; jax {data['jax']} / jaxlib {data['jaxlib']}, Python "
           f"{data['python']}; {data['cores']} cores, {data['memory_gib']} GiB; {data['date']}.",
           f"Command: `{data['command']}` ({'smoke sizes' if data['smoke'] else 'full sizes'}).",
           '']
  a = parts.get('end_to_end')
  if a:
    lines += ['## main.py end to end', '', f"Status: {a['status']}."
              + (' Channels-last convolutions (the layout check held).'
                 if a.get('gpu_conv_nhwc') else '')]
    if 'data' in a:
      d = a['data']
      lines += ['', f"Data: {d['videos']} synthetic videos (SSv1 format, {d['frames_per_video']} "
                f"frames a video, {d['jpeg_kib_per_frame']} KiB a frame) made in "
                f"{d['generate_s']} s and prepared in {d['prepare_s']} s with {d['workers']} "
                'processes.']
    if 'command' in a:
      lines += ['', f"Command (WORK: a scratch folder): `{a['command']}`", '',
                '| run | exit | wall (s) | train step compile (s) | from | steady clips/s '
                '| input wait |', '|---|---|---|---|---|---|---|']
      for run in ('cold', 'warm'):
        r = a.get(run)
        if r:
          wait = r.get('input_wait_fraction')
          lines.append(f"| {run} | {r['exit']} | {r['wall_s']} | {_fmt(r['compile_s'])} "
                       f"| {r['compile_cache'] or '-'} | {_fmt(r.get('clips_per_s'))} "
                       f"| {_fmt(None if wait is None else 100 * wait)}% |")
      if 'warm_over_cold' in a:
        lines += ['', f"Warm restart compile / cold: **{a['warm_over_cold']:.3f}** (goal <= 0.15)."]
      if 'final_eval' in a:
        lines += [f"Final evaluation: top-1 {a['final_eval']['top1']:.3f} on "
                  f"{a['final_eval']['examples']} clips (synthetic data; a check that it ran)."]
      nhwc = a.get('gpu_conv_nhwc', False)
      step_only = _step_row(parts.get('steps'), 'cstm_bninception', nhwc,
                            batch=a.get('per_device_batch'))
      if step_only and a.get('cold', {}).get('clips_per_s'):
        lines += [f"Step only (the benchmark, same model and batch, "
                  f"{'channels-last' if nhwc else 'default layout'}): "
                  f"{step_only['clips_per_s']:.1f} clips/s; main.py reaches "
                  f"{a['cold']['clips_per_s'] / step_only['clips_per_s']:.2f} of it."]
  d = parts.get('loader')
  if d:
    lines += ['', '## Loader', '', f"Status: {d['status']}. {d.get('frames')} frames, crop "
              f"{d.get('crop')}, batch {d.get('batch')}, {d.get('cores')} cores.", '',
              '| worker processes | clips/s | clips/s per process |', '|---|---|---|']
    lines += [f"| {r['workers']} | {r['clips_per_s']} | {r['clips_per_s_per_process']} |"
              for r in d.get('rows', [])]
  c = parts.get('layout')
  if c:
    lines += ['', '## Channels-last layout check', '', f"Status: {c['status']}."]
    if 'lines' in c:
      lines += ['', '```'] + c['lines'] + ['```']
  b = parts.get('steps')
  if b:
    lines += ['', '## Train steps', '', f"Status: {b['status']}.", '',
              '| model | frames | per-device batch | layout | clips/s | compile (s) | memory (GiB) '
              '| CSTM / TSN |', '|---|---|---|---|---|---|---|---|']
    for r in b.get('rows', []):
      layout = 'channels-last' if r['gpu_conv_nhwc'] else 'default'
      if r.get('error'):
        lines.append(f"| {r['model']} | {r['frames']} | {r['per_device_batch']} | {layout} "
                     f"| failed: {r['error'][:80]} | | | |")
        continue
      tsn = _step_row(b, 'tsn_bninception', r['gpu_conv_nhwc'], batch=r['per_device_batch'],
                      frames=r['frames'])
      ratio = (r['clips_per_s'] / tsn['clips_per_s']
               if r['model'] == 'cstm_bninception' and tsn else None)
      lines.append(f"| {r['model']} | {r['frames']} | {r['per_device_batch']} | {layout} "
                   f"| {r['clips_per_s']:.1f} | {r['compile_s']:.1f} "
                   f"| {_fmt(r.get('memory_gb'), '.2f')} | {_fmt(ratio, '.2f')} |")
    if b.get('skipped'):
      lines += ['', 'Not run (budget): ' + '; '.join(b['skipped']) + '.']
  return '\n'.join(lines) + '\n'


def _step_row(part, model, nhwc, *, batch=None, frames=None):
  for r in (part or {}).get('rows', []):
    if (r['model'] == model and r['gpu_conv_nhwc'] == nhwc and not r.get('error')
        and (batch is None or r['per_device_batch'] == batch)
        and (frames is None or r['frames'] == frames)):
      return r
  return None


# --- Command line -----------------------------------------------------------------------------

def define_flags(flag_values: flags.FlagValues) -> None:
  define = cli_flags.definer(flag_values)
  define('string', 'out', 'docs/bench', 'Folder for device_<device>.{json,md}.')
  define('bool', 'smoke', False, 'Every part at tiny sizes (a CPU; what the tests run).')
  define('float', 'budget_s', sum(BUDGET_S.values()), 'Seconds for all the parts together; '
         'each part gets its share of BUDGET_S.', lower_bound=1.0)
  define('list', 'parts', list(PARTS), f'Parts to run, of {", ".join(PARTS)}.')
  define('string', 'work', None, 'Scratch folder (default: a temporary one, removed after).')
  define('string', 'train_config', None, 'The end-to-end part\'s main.py config instead of '
         f'{FULL.config} ({SMOKE.config} with --smoke), e.g. the full model on smoke-sized data.')
  define('integer', 'per_device_batch', None, 'The end-to-end part\'s per-device batch '
         f'(default {FULL.per_device_batch}; {SMOKE.per_device_batch} with --smoke).',
         lower_bound=1)


def main(argv=None) -> int:
  args = cli_flags.parse(argv, __doc__, define_flags)
  unknown = set(args.parts) - set(PARTS)
  if unknown:
    cli_flags.fail(f'--parts: unknown {", ".join(sorted(unknown))}; choose from {", ".join(PARTS)}')
  global _set_preallocate
  if PREALLOCATE not in os.environ:
    os.environ[PREALLOCATE] = 'false'
    _set_preallocate = True
  sizes = SMOKE if args.smoke else FULL
  sizes = dataclasses.replace(sizes, config=args.train_config or sizes.config,
                              per_device_batch=args.per_device_batch or sizes.per_device_batch)
  started = time.monotonic()
  devices = probe_devices()
  driver = nvidia_driver()
  name = f"device_{slug(devices['kind'])}{'_smoke' if args.smoke else ''}"
  header = {
      'device': devices['kind'], 'devices': devices['count'], 'platform': devices['platform'],
      'driver': driver and driver['driver'], 'jax': devices['jax'], 'jaxlib': devices['jaxlib'],
      'python': platform.python_version(), 'cores': workers.usable_cores(),
      'memory_gib': round(workers.host_memory_bytes() / 2 ** 30),
      'date': datetime.date.today().isoformat(), 'smoke': args.smoke,
      'command': 'python -m tools.device_check ' + ' '.join(cli_flags.arguments(argv)),
      'budget_s': args.budget_s}
  report = Report(pathlib.Path(paths.expand(args.out)), name, header)
  print(f'device check on {devices["count"]} x {devices["kind"]}: {report.md_path}', flush=True)
  scale = args.budget_s / sum(BUDGET_S.values())
  work = pathlib.Path(paths.expand(args.work)) if args.work else pathlib.Path(
      tempfile.mkdtemp(prefix='device_check_'))
  work.mkdir(parents=True, exist_ok=True)
  try:
    for name in (p for p in PARTS if p in args.parts):
      part = report.part(name)
      report.save()
      budget = Deadline(BUDGET_S[name] * scale if name != 'steps' else
                        max(0.0, args.budget_s - (time.monotonic() - started)))
      tick = time.monotonic()
      print(f'[{name}] budget {budget.left():.0f} s ...', flush=True)
      try:
        if name == 'end_to_end':
          layout = report.data['parts'].get('layout', {})
          nhwc = devices['platform'] == 'gpu' and layout.get('holds', False)
          part_end_to_end(part, report, sizes, work=work, devices=devices['count'], deadline=budget,
                          nhwc=nhwc)
        elif name == 'loader':
          part_loader(part, report, sizes, work=work, deadline=budget)
        elif name == 'layout':
          part_layout(part, report, sizes)
        else:
          part_steps(part, report, sizes, devices=devices['count'], deadline=budget,
                     smoke=args.smoke, cache_dir=str(work / 'xla_cache'))
      except Exception as e:  # one part's failure is recorded; the next part runs
        part['status'] = f'failed: {type(e).__name__}: {first_line(e)}'
      part['seconds'] = round(time.monotonic() - tick, 1)
      report.save()
      print(f'[{name}] {part["status"]} in {part["seconds"]} s', flush=True)
  finally:
    if not args.work:
      shutil.rmtree(work, ignore_errors=True)
  print(f'wrote {report.json_path} and {report.md_path}', flush=True)
  failed = [n for n, p in report.data['parts'].items() if p['status'].startswith('failed')]
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(run_main(main))
