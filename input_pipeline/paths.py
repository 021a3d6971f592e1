"""Path arguments as users type them: `~` and environment variables expanded.

The shell leaves `~` alone inside `--flag=~/x`, and config files hold paths as plain strings.
"""
import os

REMOTE_SCHEMES = ('gs://',)


def expand(text) -> str:
  """`~` and `$VAR` / `${VAR}` expanded; '' stays ''."""
  return os.path.expanduser(os.path.expandvars(str(text))) if text else ''


def is_remote(path) -> bool:
  return str(path).startswith(REMOTE_SCHEMES)
