"""A real multi-process run: 2 processes x 4 fake CPU devices on localhost.

The processes find each other as on a GPU cluster (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; launch/slurm.sbatch sets the same through
SLURM), start from an empty data_dir that process 0 prepares while process
1 waits, train, checkpoint and stop; then the run resumes with 2 processes,
and its checkpoint samples in a 1-device Sampler of this process.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import common
from xmcgan_jax import errors
from xmcgan_jax import run_dir
from xmcgan_jax.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _flags(workdir, data_dir, steps):
  return [sys.executable, '-m', 'xmcgan_jax.main', '--config=configs/tiny.py',
          f'--workdir={workdir}', f'--config.data_dir={data_dir}',
          f'--config.num_train_steps={steps}',
          '--config.checkpoint_every_steps=2', '--config.sample_every_steps=2']


def _env(process_id, num_processes, port):
  env = dict(os.environ)
  env['XLA_FLAGS'] = env.get('XLA_FLAGS', '').replace(
      '--xla_force_host_platform_device_count=8',
      '--xla_force_host_platform_device_count=4')
  env.update(JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
             JAX_NUM_PROCESSES=str(num_processes),
             JAX_PROCESS_ID=str(process_id))
  return env


def _run_processes(argv, count, log_dir, name, timeout=600):
  """Runs `count` processes of one job; returns their exit codes and logs."""
  port = _free_port()
  procs, logs = [], []
  for i in range(count):
    log = open(os.path.join(log_dir, f'{name}_{i}.log'), 'w+')
    procs.append(subprocess.Popen(argv, cwd=ROOT, env=_env(i, count, port),
                                  stdout=log, stderr=subprocess.STDOUT))
    logs.append(log)
  codes = []
  try:
    for proc in procs:
      codes.append(proc.wait(timeout=timeout))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  texts = []
  for log in logs:
    log.seek(0)
    texts.append(log.read())
    log.close()
  return codes, texts


@pytest.mark.slow
def test_two_processes_train_resume_and_sample(tmp_path):
  workdir = tmp_path / 'run'  # Does not exist yet.
  data_dir = f'{workdir}/../tfds'  # Normalised: both processes agree.
  codes, logs = _run_processes(_flags(workdir, data_dir, 2), 2, tmp_path,
                               'first')
  assert codes == [0, 0], '\n\n'.join(t[-3000:] for t in logs)
  assert 'process 0 of 2, 4 local / 8 global devices' in logs[0]
  checkpoints = run_dir.Checkpointer(str(workdir / 'checkpoints'))
  assert checkpoints.all_steps() == [2]
  assert os.path.isdir(tmp_path / 'tfds' / 'shapes')

  codes, logs = _run_processes(_flags(workdir, data_dir, 4), 2, tmp_path,
                               'resumed')
  assert codes == [0, 0], '\n\n'.join(t[-3000:] for t in logs)
  assert 'Resumed from step 2' in logs[0]
  checkpoints.reload()
  assert checkpoints.all_steps() == [2, 4]

  # One process cannot continue a 2-process data order: it says what to do
  # (before compiling anything; main.py prints it as one line, status 2).
  config = common.load_config(os.path.join(ROOT, 'configs', 'tiny.py'))
  config.data_dir = data_dir
  config.num_train_steps = 6
  with pytest.raises(errors.UserError, match='written by 2 processes.*'
                     'Resume with 2 processes'):
    train.train(config, str(workdir))

  from xmcgan_jax.sampling import sample  # pylint: disable=g-import-not-at-top
  sampler = sample.Sampler.from_workdir(str(workdir))
  assert sampler.step == 4
  images = sampler.sample(['a large red circle at the center'], seed=0)
  assert images.shape == (1, 64, 64, 3) and images.dtype == np.uint8
