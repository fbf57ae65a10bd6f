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
