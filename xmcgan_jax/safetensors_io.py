"""Reads and writes .safetensors files with numpy alone (no torch).

The format is an 8-byte little-endian header size, a JSON header mapping each
tensor name to {dtype, shape, data_offsets}, then the raw little-endian bytes.
It is small enough that a reader beats another dependency.
"""

import json
import struct
from typing import Dict

import ml_dtypes
import numpy as np

_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16,
    'BF16': ml_dtypes.bfloat16, 'I64': np.int64, 'I32': np.int32,
    'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'BOOL': np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def load(path: str) -> Dict[str, np.ndarray]:
  """All tensors of a .safetensors file as numpy arrays.

  Args:
    path: the file.

  Returns:
    {name: array}.

  Raises:
    ValueError: a malformed file or an unsupported dtype, naming the file.
  """
  with open(path, 'rb') as f:
    data = f.read()
  if len(data) < 8:
    raise ValueError(f'{path}: too short to be a safetensors file.')
  (header_size,) = struct.unpack('<Q', data[:8])
  if 8 + header_size > len(data):
    raise ValueError(f'{path}: header size {header_size} exceeds the file.')
  try:
    header = json.loads(data[8:8 + header_size])
  except ValueError as e:
    raise ValueError(f'{path}: unreadable safetensors header ({e}).') from None
  body = memoryview(data)[8 + header_size:]
  tensors = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    if info['dtype'] not in _DTYPES:
      raise ValueError(f'{path}: tensor {name!r} has unsupported dtype '
                       f'{info["dtype"]}.')
    begin, end = info['data_offsets']
    dtype = np.dtype(_DTYPES[info['dtype']]).newbyteorder('<')
    array = np.frombuffer(body[begin:end], dtype=dtype)
    if array.size != int(np.prod(info['shape'], dtype=np.int64)):
      raise ValueError(f'{path}: tensor {name!r} has {array.size} values for '
                       f'shape {info["shape"]}.')
    tensors[name] = array.reshape(info['shape']).astype(dtype.newbyteorder('='))
  return tensors


def save(path: str, tensors: Dict[str, np.ndarray]) -> None:
  """Writes {name: array} as a .safetensors file (for tests and converters)."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    raw = array.astype(array.dtype.newbyteorder('<')).tobytes()
    header[name] = {'dtype': _NAMES[array.dtype], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  encoded = json.dumps(header).encode()
  encoded += b' ' * (-len(encoded) % 8)  # Align the data to 8 bytes.
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(encoded)))
    f.write(encoded)
    for chunk in chunks:
      f.write(chunk)
