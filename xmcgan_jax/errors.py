"""Errors the command line reports as one line, without a traceback.

A `UserError` is a problem with what the user gave (a config value, a path, a
missing file or run): `main.py` prints its message and exits with status 2.
Anything else is a crash and keeps its traceback. The subclasses also derive
from the built-in type a caller of the Python API would expect.
"""


class UserError(Exception):
  """A problem with the user's input; the message says what to change."""


class ConfigError(UserError, ValueError):
  """A config field has a bad value (the message names the field)."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the user named (or a run needs) does not exist."""


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed; the run stops rather than train unsaved."""
