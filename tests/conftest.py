"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os

# The tests are dominated by XLA compile time of small models; cheaper LLVM
# optimisation makes compiles 2-4x faster for a 2x slower (tiny) step.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8'
                           ' --xla_backend_optimization_level=0'
                           ' --xla_llvm_disable_expensive_passes=true')
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
