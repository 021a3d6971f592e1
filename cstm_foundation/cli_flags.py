"""absl flags for the command-line tools, each run parsing into a fresh `FlagValues`.

`main.py` uses absl's global flags through `app.run`. The other tools are also called as
functions (`predict.main([...])`, and several in one process by the demo and the tests), where
global flags would collide (`--config`, `--out`) and keep the last call's values; so each call
defines its flags into its own `FlagValues`:

    def define_flags(flag_values):
      define = cli_flags.definer(flag_values)
      define('string', 'video', None, 'A video file.', required=True)

    def main(argv=None):
      args = cli_flags.parse(argv, __doc__, define_flags)

`--help` prints the module's docstring and every flag. A bad flag prints `error: ...` on stderr
and exits with 2 (a usage error; 1 is kept for a failed run).
"""
import os
import re
import sys
from typing import Callable, Optional, Sequence

from absl import flags

HELP = ('-h', '--help', '-help', '--helpshort', '--helpfull')


def definer(flag_values: flags.FlagValues) -> Callable:
  """`define(kind, name, default, [enum values,] help, **options)`: absl's `DEFINE_<kind>` into
  `flag_values`, so that a command's flags read as a table."""
  def define(kind: str, *args, **options):
    return getattr(flags, f'DEFINE_{kind}')(*args, flag_values=flag_values, **options)
  return define


def arguments(argv: Optional[Sequence[str]]) -> list[str]:
  """The command line after the program name: `argv`, or `sys.argv[1:]` when None."""
  return list(sys.argv[1:] if argv is None else argv)


def parse(argv: Optional[Sequence[str]], doc: str, define: Callable[[flags.FlagValues], None],
          parser=None) -> flags.FlagValues:
  """Flags defined by `define` and parsed from `argv` (after the program name); no positional
  arguments. `parser(argv, flag_values)` parses instead of `flag_values(argv)` (argv with the
  program name first)."""
  return parse_with_positional(argv, doc, define, names=(), parser=parser)[0]


def parse_with_positional(argv: Optional[Sequence[str]], doc: str,
                          define: Callable[[flags.FlagValues], None], *, names: Sequence[str],
                          parser=None) -> tuple[flags.FlagValues, list[str]]:
  """`parse` for a command that also takes the positional arguments `names` (all of them)."""
  argv = arguments(argv)
  flag_values = flags.FlagValues()
  define(flag_values)
  if any(arg in HELP for arg in argv):
    print(help_text(doc, flag_values, names))
    raise SystemExit(0)
  try:
    positional = (parser or (lambda a, f: f(a)))([program()] + argv, flag_values)[1:]
  except flags.Error as error:
    fail(describe(error))
  if len(positional) != len(names):
    fail(f'expected {" ".join(names)}, got {" ".join(positional)}' if names else
         f'unexpected arguments: {" ".join(positional)}')
  if not flags.FLAGS.is_parsed():
    # absl's own flags (its logging's) keep their defaults: without this, the first log line of
    # the command is preceded by "WARNING: Logging before flag parsing goes to stderr."
    flags.FLAGS.mark_as_parsed()
  return flag_values, positional


def fail(message: str):
  """Ends a command whose arguments are wrong: `error: message` on stderr, exit status 2."""
  print(f'error: {message} (--help lists the flags)', file=sys.stderr, flush=True)
  raise SystemExit(2)


def describe(error: flags.Error) -> str:
  """absl's message, shorter where it is roundabout ('--out is required')."""
  message = str(error)
  missing = re.search(r'Flag --(\S+) must have a value other than None', message)
  return f'--{missing.group(1)} is required' if missing else message


def help_text(doc: str, flag_values: flags.FlagValues, names: Sequence[str] = ()) -> str:
  """The module's docstring, then every flag with its help and default."""
  usage = f'usage: {program()} [flags] {" ".join(names)}'.rstrip()
  listing = [line for line in flag_values.get_help(include_special_flags=False).splitlines()
             if line.startswith(' ')]  # absl groups flags under module names: one list here
  return '\n'.join([usage, '', doc.strip(), '', 'flags:'] + listing)


def program() -> str:
  """The command as the user typed it: `python -m package.module`, `cstm-predict` or `x.py`."""
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  if spec is not None and spec.name not in ('__main__', None):
    return f'python -m {spec.name}'
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'command'
