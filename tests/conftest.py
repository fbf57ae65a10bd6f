"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os

# The tests are dominated by XLA compile time of small models; cheaper LLVM
# optimisation makes compiles 2-4x faster for a 2x slower (tiny) step, and
# XLA:CPU's older loop emitters (no fusion emitters) compile a train step in
# about half the time (measured: 7.5-8.8 s against 14.1-14.4 s for
# test_train_step's, its run time unchanged).
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0'
                           ' --xla_llvm_disable_expensive_passes=true'
                           ' --xla_cpu_use_fusion_emitters=false')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# TensorFlow (used by the data pipeline) must not grab accelerators in tests.
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One persistent compilation cache per test session, shared with the
# subprocesses the tests start (CLI, notebook kernel): identical train steps
# compile once.
import tempfile  # pylint: disable=g-import-not-at-top,g-bad-import-order

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      tempfile.mkdtemp(prefix='xmcgan_jax_cache_'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')


# The test files that take longest (minutes each, measured with --durations),
# longest first. pytest.ini hands whole files to two workers in collection
# order (--dist loadfile --no-loadscope-reorder), so starting with these lets
# the short files fill in at the end instead of one worker finishing a long
# file alone.
_LONGEST_FILES = ('test_train.py', 'test_readme.py', 'test_models.py',
                  'test_train_step.py', 'test_text_encoder.py',
                  'test_image_encoders.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.path))
    return (_LONGEST_FILES.index(name) if name in _LONGEST_FILES
            else len(_LONGEST_FILES))
  items.sort(key=rank)  # Stable: tests keep their order within a file.
