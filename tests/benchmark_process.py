"""Runs the repository's benchmark scripts as their users do: whole
processes from the repository root (benchmarks/ is not an installed package),
with one CPU device and a fresh HOME."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(tmp_path, **extra):
  """The environment of a user's shell: HOME=tmp_path, one CPU device."""
  # PYTHON: gpu.sh runs this interpreter, not whatever python3 PATH finds
  # (from an unactivated venv that one has no JAX).
  variables = dict(os.environ, HOME=str(tmp_path), PYTHONPATH=ROOT,
                   PYTHON=sys.executable)
  variables.pop('TFDS_DATA_DIR', None)
  variables.pop('JAX_COMPILATION_CACHE_DIR', None)
  variables['XLA_FLAGS'] = variables.get('XLA_FLAGS', '').replace(
      '--xla_force_host_platform_device_count=8', '')
  variables.update(extra)
  return variables


def run(command, variables, timeout):
  """Runs command from the repository root; asserts it exits 0."""
  result = subprocess.run(command, cwd=ROOT, env=variables,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, (command, result.stdout[-3000:],
                                  result.stderr[-3000:])
  return result
