"""What the command line shows: the project's own lines, one-line errors.

A default run prints the project's log lines (config, step lines with loss,
speed and ETA, checkpoints) and the warnings of the libraries, not their
INFO chatter (Orbax logs hundreds of lines per run, JAX and TensorFlow probe
for accelerators that a CPU machine does not have). `--verbosity=1` (or
more) shows everything again.
"""

import logging
import os
import sys
import tempfile
from typing import List, Optional, Sequence

from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Library warnings that say nothing to a user of this project: TFDS warns
# whenever a builder has a config of its own (Shapes does, by design).
_BENIGN_WARNINGS = ('Using custom data configuration',)
# Libraries whose failures reach the user through this project's own
# messages (a failed save, an unreadable checkpoint), so their own records,
# tracebacks of abandoned background tasks included, are detail.
_DETAIL_ONLY = ('/orbax/', '/asyncio/')


class _ProjectLinesFilter(logging.Filter):
  """Passes this package's records and other libraries' warnings."""

  def filter(self, record: logging.LogRecord) -> bool:
    path = record.pathname or ''
    if path.startswith(_PACKAGE_DIR):
      return True
    if any(part in path for part in _DETAIL_ONLY) or record.name == 'asyncio':
      return False
    if any(text in str(record.msg) for text in _BENIGN_WARNINGS):
      return False
    return record.levelno >= logging.WARNING


def quiet_libraries(verbosity: int) -> None:
  """Keeps library INFO lines off the console unless verbosity >= 1.

  Args:
    verbosity: absl's --verbosity (0 by default).
  """
  if verbosity >= 1:
    return
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, _ProjectLinesFilter) for f in handler.filters):
    handler.addFilter(_ProjectLinesFilter())


# What TensorFlow's C++ prints on import while it probes for CUDA: on a
# machine without one these read as errors although nothing is wrong.
_PROBE_LINES = ('All log messages before absl::InitializeLog()',
                'cudart_stub.cc', 'cuda_platform.cc', 'cuInit',
                'Unable to register cu', 'cuda_dnn.cc', 'cuda_fft.cc',
                'cuda_blas.cc', 'computation_placer.cc')


def import_tensorflow(backend: str, verbosity: int = 0):
  """Imports TensorFlow for the data pipeline, without its GPU probe lines.

  TensorFlow only feeds data here, so it is kept off the accelerators. Its
  C++ start-up lines about CUDA go to the process's stderr before any
  setting can silence them; with verbosity 0 they are captured and dropped,
  and any other line is passed through. An explicit TF_CPP_MIN_LOG_LEVEL
  wins over the default set here (3 where JAX found no accelerator, else 1).

  Args:
    backend: jax.default_backend() ('cpu', 'gpu', 'tpu').
    verbosity: absl's --verbosity; >= 1 shows everything.

  Returns:
    The tensorflow module.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3' if backend == 'cpu'
                        else '1')
  if verbosity < 1:
    # TensorFlow's oneDNN graph rewrites print notices at import and at the
    # first int64 op ('E0000 ... oneDNN supports DT_INT64 only on platforms
    # with AVX-512'), which read as errors. TF only decodes and batches data
    # here, where those rewrites gain nothing; an explicit setting wins.
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if verbosity >= 1 or 'tensorflow' in sys.modules:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  else:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode='w+b') as captured:
      os.dup2(captured.fileno(), 2)
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        _hide_accelerators(tf)  # Lists the devices: the cuInit probe.
      finally:  # Also when the import fails: its own lines are kept.
        os.dup2(saved, 2)
        os.close(saved)
        captured.seek(0)
        text = captured.read().decode('utf-8', 'replace')
        kept = [line for line in text.splitlines()
                if line.strip() and not any(p in line for p in _PROBE_LINES)]
        if kept:
          print('\n'.join(kept), file=sys.stderr, flush=True)
    return tf
  _hide_accelerators(tf)
  return tf


def _hide_accelerators(tf) -> None:
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')


def flag_value(argv: Sequence[str], name: str) -> Optional[str]:
  """The value of --name=V or --name V in argv (the last one), else None."""
  value = None
  for i, arg in enumerate(argv):
    for prefix in ('--', '-'):
      if arg.startswith(f'{prefix}{name}='):
        value = arg.split('=', 1)[1]
      elif arg == f'{prefix}{name}' and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def config_overrides(argv: Sequence[str]) -> List[str]:
  """The dotted keys of --config.KEY[=VALUE] arguments, in order."""
  keys = []
  for arg in argv:
    for prefix in ('--config.', '-config.'):
      if arg.startswith(prefix):
        keys.append(arg[len(prefix):].split('=', 1)[0])
  return keys


def exit_with_error(error: BaseException, status: int = 2,
                    hard: bool = False) -> None:
  """Prints `error: <message>` to stderr and exits with `status`.

  Args:
    error: its str() is the message.
    status: exit status (2: the user's input; 1: a failure at run time).
    hard: exit at once with os._exit, without waiting for background
      threads (Orbax keeps a failed save's threads waiting for minutes).
  """
  sys.stdout.flush()
  message = str(error).strip() or type(error).__name__
  print(f'error: {message}', file=sys.stderr, flush=True)
  if hard:
    logging.shutdown()
    os._exit(status)  # pylint: disable=protected-access
  sys.exit(status)
