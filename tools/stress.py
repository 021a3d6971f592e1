"""Stress: the suite's timing-sensitive tests, round after round, beside a CPU load that takes
every core (as on a busy login node or CI runner).

  python -m tools.stress [--rounds 5] [--load N] [--cluster auto|on|off] [--out runs/stress]

The tests are every one that sends a signal, kills a process or waits on a timeout or a peer
(`TESTS`: the stops, peers and faults tests, the chaos soaks of training and of prepare), and
the cluster tests (real SLURM and Open MPI, `tests/cluster`) where `sinfo` is installed. Each
round runs them as `make test` does (two pytest workers); beside it, `--load` processes (default:
one per core) spin for the whole run. Every failure is printed with what replays it: the test's
id and, for the chaos soaks, the seed their report names. The figures go to
`<out>/report.json`; exit status 1 when any round failed.
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS = ('tests/test_stops.py', 'tests/test_peers.py', 'tests/test_faults.py',
         'tests/test_train.py::test_a_run_stopped_anywhere_resumes_to_the_uninterrupted_result')
CLUSTER = 'tests/cluster'
_SEED = re.compile(r"'seed': (\d+)")
REPLAY = {'test_prepare_stopped_at_random_moments': 'python -m tools.chaos_prepare --seed {}',
          'test_a_run_stopped_anywhere': 'python -m tools.chaos --seed {}'}


def start_load(processes: int) -> subprocess.Popen:
  """`processes` busy loops in one new process group (its leader a shell that waits on them)."""
  loop = f'{sys.executable} -c "while True: pass"'
  return subprocess.Popen(['bash', '-c', ' & '.join([loop] * processes) + ' & wait'],
                          process_group=0, stdout=subprocess.DEVNULL)


def failures_of(junit: pathlib.Path) -> tuple[int, list[dict]]:
  """(tests run, [{'test', 'message', 'replay'}]) from a pytest JUnit XML report."""
  if not junit.exists():
    return 0, [{'test': '(the whole round)', 'message': 'pytest wrote no report', 'replay': ''}]
  tree = ElementTree.parse(junit)
  cases, failed = 0, []
  for case in tree.iter('testcase'):
    cases += 1
    for problem in [*case.findall('failure'), *case.findall('error')]:
      path = case.get('classname', '').replace('.', '/') + '.py'
      test = f'{path}::{case.get("name")}'
      text = (problem.get('message') or '') + '\n' + (problem.text or '')
      replay = f'python -m pytest -p no:cacheprovider {test!r}'
      seed = _SEED.search(text)
      for prefix, command in REPLAY.items():
        if seed and case.get('name', '').startswith(prefix):
          replay += f'; or: {command.format(seed.group(1))}'
      failed.append({'test': test, 'message': text.strip()[:1500], 'replay': replay})
  return cases, failed


def run_round(number: int, tests: list[str], out: pathlib.Path, *, workers: int) -> dict:
  junit = out / f'round{number}.xml'
  log = out / f'round{number}.log'
  begun = time.monotonic()
  with log.open('w') as stream:
    code = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-q',
                           '-n', str(workers), '--dist', 'loadfile', f'--junitxml={junit}',
                           *tests], cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT).returncode
  cases, failed = failures_of(junit)
  if code != 0 and not failed:
    failed = [{'test': '(the round)', 'message': f'pytest exited with {code}: see {log}',
               'replay': ''}]
  return {'round': number, 'seconds': round(time.monotonic() - begun, 1), 'tests': cases,
          'failed': failed}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--load', type=int, default=os.cpu_count() or 2,
                      help='busy processes beside the tests (default: one per core)')
  parser.add_argument('--cluster', choices=('auto', 'on', 'off'), default='auto',
                      help='the SLURM / Open MPI tests too (auto: where sinfo is installed)')
  parser.add_argument('--workers', type=int, default=2, help='pytest workers, as make test')
  parser.add_argument('--out', default='runs/stress')
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out).expanduser().absolute()
  shutil.rmtree(out, ignore_errors=True)
  out.mkdir(parents=True)
  cluster = args.cluster == 'on' or (args.cluster == 'auto' and shutil.which('sinfo'))
  load = start_load(args.load) if args.load > 0 else None
  rounds, begun = [], time.monotonic()
  try:
    for number in range(1, args.rounds + 1):
      result = run_round(number, list(TESTS), out, workers=args.workers)
      if cluster:  # one SLURM and MPI setup for the machine: one pytest process
        extra = run_round(number * 100, [CLUSTER], out, workers=1)
        result['tests'] += extra['tests']
        result['failed'] += extra['failed']
        result['seconds'] = round(result['seconds'] + extra['seconds'], 1)
      rounds.append(result)
      print(f"round {number}: {result['tests']} tests, {len(result['failed'])} failed, "
            f"{result['seconds']:.0f} s", flush=True)
      for failure in result['failed']:
        print(f"  FAILED {failure['test']}\n    {failure['message'][:300]}\n"
              f"    replay: {failure['replay']}", flush=True)
  finally:
    if load is not None:
      os.killpg(load.pid, signal.SIGKILL)
      load.wait()
  report = {'rounds': rounds, 'load_processes': args.load, 'cores': os.cpu_count(),
            'cluster': bool(cluster), 'tests': list(TESTS) + ([CLUSTER] if cluster else []),
            'passed_rounds': sum(not r['failed'] for r in rounds),
            'wall_s': round(time.monotonic() - begun, 1),
            'python': sys.version.split()[0],
            'command': 'python -m tools.stress ' + ' '.join(sys.argv[1:] if argv is None
                                                            else argv)}
  (out / 'report.json').write_text(json.dumps(report, indent=1))
  print(f"{report['passed_rounds']} of {len(rounds)} rounds passed with {args.load} busy "
        f"processes on {report['cores']} cores, {report['wall_s']:.0f} s; {out / 'report.json'}")
  return 0 if report['passed_rounds'] == len(rounds) else 1


if __name__ == '__main__':
  sys.exit(main())
