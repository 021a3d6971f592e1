"""Experiment configs: read (an experiment's name or a config file, with its `:arg`, or a run's
JSON), taken from the command line (`--config` with `--config.KEY=VALUE` overrides, for every
command that has a config) and checked (unknown keys named with the closest known ones).
`config/finish.py` completes it for the run.

The experiments' config files are `configs/*.py` in a checkout, and `cstm_jax/configs/` once
installed: `--config=ssv2_16f:smoke` names one, wherever it is; `--config=configs/ssv2_16f.py`
and any other path work too."""
import difflib
import importlib.util
import json
import pathlib
import re
import sys
from typing import Optional, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from cstm_foundation import cli_flags, paths
from cstm_foundation.errors import BadFile, ConfigError, MissingFile, UserError
from cstm_jax.config import defaults

# Names other codebases use for our keys: a misspelling is matched to these too.
ALIASES = {'learning_rate': 'base_lr', 'lr': 'base_lr', 'wd': 'weight_decay',
           'warmup': 'warmup_epochs', 'num_epochs': 'epochs', 'frames': 'num_frames',
           'classes': 'num_classes', 'arch': 'backbone', 'workers': 'num_workers'}


def configs_dir() -> pathlib.Path:
  """The folder of the experiments' config files: the installed package's, else the checkout's."""
  package = pathlib.Path(__file__).resolve().parents[1]
  installed = package / 'configs'
  return installed if installed.is_dir() else package.parent / 'configs'


def experiments() -> list[str]:
  """The names `--config` takes: every config file of `configs_dir()`."""
  return sorted(p.stem for p in configs_dir().glob('[!_]*.py'))


def _named(name: str) -> Optional[pathlib.Path]:
  """The config file of experiment `name` ('ssv2_16f'), or None if `name` is not a bare name."""
  if not re.fullmatch(r'\w+', name) or paths.resolve(name).exists():
    return None
  path = configs_dir() / f'{name}.py'
  if not path.is_file():
    close = difflib.get_close_matches(name, experiments(), n=3)
    raise MissingFile(f'--config={name}: no experiment of that name' +
                      (f'; did you mean {" or ".join(close)}?' if close else '') +
                      f' The experiments: {", ".join(experiments())} (in {configs_dir()}); '
                      'or pass a config file\'s path')
  return path


def load(spec) -> ml_collections.ConfigDict:
  """An experiment's name ('ssv2_16f', 'ssv2_16f:smoke'), a config file ('configs/ssv2_16f.py',
  'configs/ssv2_16f.py:smoke') or a workdir's 'config.json' (local or gs://)."""
  spec = str(spec)
  if paths.is_remote(spec):
    path, arg = paths.resolve(spec), ''
  else:
    path, _, arg = spec.partition(':')
    path = _named(path) or paths.resolve(path)
  if not path.is_file():
    raise MissingFile(f'{path}: no such config file')
  if path.suffix == '.json':
    try:
      # A run written before a key changed name loads with today's keys.
      return ml_collections.ConfigDict(defaults.upgraded(json.loads(path.read_text())))
    except json.JSONDecodeError as e:
      raise BadFile(f'{path}:{e.lineno}: not valid JSON ({e.msg}); a run writes its '
                    'config.json whole: pass the config file it came from instead') from e
  if paths.is_remote(path):
    raise ConfigError(f'{path}: a config file is read from a local disk (only a run\'s '
                     'config.json may be in Cloud Storage)')
  module = load_module(path)
  try:
    return module.get_config(arg) if arg else module.get_config()
  except UserError:
    raise
  except Exception as e:  # raised by the config file's own code
    raise BadFile(f'{_line_in(e, path)}: {type(e).__name__}: {e} (while loading the config '
                  'file)') from e


def load_module(spec):
  """The module of a config file, by experiment name or path (its constants, its get_config)."""
  path = _named(str(spec)) or paths.resolve(spec)
  if not path.is_file():
    raise MissingFile(f'{path}: no such config file')
  module_spec = importlib.util.spec_from_file_location(f'_config_{path.stem}', str(path))
  if module_spec is None:
    raise BadFile(f"{path}: not a config file (a .py file) or a run's config.json")
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except UserError:
    raise
  except SyntaxError as e:
    raise BadFile(f'{e.filename or path}:{e.lineno}: {e.msg}; fix the config file') from e
  except Exception as e:  # raised by the config file's own code
    raise BadFile(f'{_line_in(e, path)}: {type(e).__name__}: {e} (while loading the config '
                  'file)') from e
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{path}: a config file defines get_config(arg)')
  return module


def _line_in(error: BaseException, path) -> str:
  """'FILE:LINE' of the deepest frame of `error`'s traceback inside `path` (else 'FILE')."""
  import traceback
  frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename == str(path)]
  return f'{path}:{frames[-1].lineno}' if frames else str(path)


class _ConfigParser(flags.ArgumentParser):
  """Reads `--config` with `load`, so it takes what `load` takes: `~` and `$VARS` (the shell
  leaves `~` after `=`), `FILE:ARG`, and a run's config.json (local or gs://)."""

  def parse(self, argument):
    config = load(argument)
    config.lock()  # a misspelt --config.KEY is refused, not added
    return config

  def flag_type(self):
    return 'config file'


def define_config_flag(flag_values=None, argv: Optional[Sequence[str]] = None,
                       help_string: str = 'Experiment config file.', required: bool = True):
  """`--config` with `--config.KEY=VALUE` overrides (ml_collections' config flag), read by
  `load`. `argv` is the full command line (the overrides are found in it); None: sys.argv."""
  flag_values = flags.FLAGS if flag_values is None else flag_values
  config_flags.DEFINE_config_file('config', None, help_string, flag_values=flag_values,
                                  lock_config=True, sys_argv=argv and list(argv))
  flag_values['config'].parser = _ConfigParser()
  if required:
    flags.mark_flag_as_required('config', flag_values)


def from_flag(flag_values, name: str = 'config') -> tuple[Optional[ml_collections.ConfigDict], str]:
  """The config `--NAME` gave (None when not given), and its name for messages:
  'config FILE[:ARG]'."""
  flag = flag_values[name]
  return ((flag.value, f'config {flag.config_filename}') if flag.present else
          (None, 'no config'))


def parse_flags(argv: list[str], flag_values=None) -> list[str]:
  """Parses `argv` (program name first) into `flag_values` (absl's global flags when None; the
  `flags_parser` of `app.run`), turning a bad config into one line: the file's problem, or the
  unknown `--config.KEY` with the closest keys."""
  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    return flag_values(argv)
  except flags.UnrecognizedFlagError as error:
    if error.flagname.startswith('config.') and not flag_values['config'].present:
      raise flags.Error(
          f'--{error.flagname}: give --config (a config file, or a run\'s '
          'config.json) before overriding its keys') from error
    raise
  except UserError as error:  # the config file is missing or wrong
    print(f'error: {error}', file=sys.stderr)
    raise SystemExit(1) from error
  except flags.IllegalFlagValueError as error:  # absl recasts a ValueError of the parser
    if not isinstance(error.__context__, UserError):
      raise
    print(f'error: {error.__context__}', file=sys.stderr)
    raise SystemExit(1) from error
  except (AttributeError, KeyError) as error:  # what config_flags raises for an unknown key
    problem = unknown_override(argv)
    if not problem:
      raise
    print(f'error: {problem}', file=sys.stderr)
    raise SystemExit(1) from error


def parse_command(argv: Optional[Sequence[str]], doc: str, define, *,
                  config_help: str = 'Experiment config file.',
                  config_required: bool = True) -> flags.FlagValues:
  """`cli_flags.parse` for a command with a `--config` (see `define_config_flag`)."""
  full_argv = [cli_flags.program()] + cli_flags.arguments(argv)

  def define_with_config(flag_values):
    define(flag_values)
    define_config_flag(flag_values, full_argv, config_help, config_required)

  return cli_flags.parse(full_argv[1:], doc, define_with_config, parse_flags)


def unknown_override(argv: list[str]) -> str:
  """The problem with the first `--config.KEY=...` of `argv` that the config lacks ('' if
  none)."""
  spec = next((a[len('--config='):] for a in argv if a.startswith('--config=')),
              next((b for a, b in zip(argv, argv[1:]) if a == '--config'), ''))
  try:
    config = load(spec)
  except UserError:
    return ''
  for arg in argv:
    if arg.startswith('--config.'):
      key = arg[len('--config.'):].partition('=')[0]
      if key not in _keys(config):
        return unknown_key_message(config, key)
  return ''


def unknown_key_message(config, key: str) -> str:
  """'unknown config key optim.lerning_rate; did you mean optim.base_lr?'; a key that was
  renamed or removed says so."""
  if key in defaults.RENAMED_KEYS:
    return f'config key {key} is now {defaults.RENAMED_KEYS[key]}'
  if key in defaults.REMOVED_KEYS:
    return f'config key {key} is gone: {defaults.REMOVED_KEYS[key]}'
  keys = _keys(config, blocks=False)
  block, _, leaf = key.rpartition('.')
  leaf = ALIASES.get(leaf, leaf)
  close_leaves = difflib.get_close_matches(leaf, {k.rpartition('.')[2] for k in keys}, n=3,
                                           cutoff=0.7)
  close_leaves = [ALIASES.get(l, l) for l in close_leaves] + [
      ALIASES[a] for a in difflib.get_close_matches(leaf, ALIASES, n=1, cutoff=0.7)]
  same_block = [k for k in keys if k.rpartition('.')[0] == block]
  suggestions = ([k for k in same_block if k.rpartition('.')[2] in close_leaves]
                 + [k for k in keys if k.rpartition('.')[2] in close_leaves and k not in same_block]
                 + difflib.get_close_matches(key, keys, n=2, cutoff=0.75))
  suggestions = list(dict.fromkeys(suggestions))[:3]
  hint = (f'did you mean {" or ".join(suggestions)}?' if suggestions else
          f'the {block} keys are {", ".join(same_block)}' if same_block else
          f'the top-level keys are {", ".join(sorted({k.partition(".")[0] for k in keys}))}')
  return f'unknown config key {key}; {hint}'


def _keys(config, blocks: bool = True) -> list[str]:
  """Every key of `config` as a dotted path: its leaves, and its blocks when `blocks`."""
  keys = []
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      keys += [name] * blocks + [f'{name}.{k}' for k in _keys(value, blocks)]
    else:
      keys.append(name)
  return keys
