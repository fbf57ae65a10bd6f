"""Converts pytorch-fid's FID Inception weights (.pth) to an .npz.

  python -m xmcgan_jax.eval.convert_inception \
      --input=pt_inception-2015-12-05-6726825d.pth --output=fid_inception.npz

The .pth is the file pytorch-fid downloads from its GitHub release. Its name
ends with the first 8 hex digits of its SHA-256 (torch hub's convention);
the conversion refuses a file whose digest does not match that suffix (or
--sha256 when given), so a truncated or different download cannot silently
change every FID. torch is needed here only; `inception.load_params` reads
the .npz without it. The arrays keep torch's names and layouts; the source
digest is stored under 'meta/source_sha256'.
"""

import argparse
import hashlib
import os
import re
from typing import Dict, Optional

import numpy as np

from xmcgan_jax.eval import inception

CANONICAL_NAME = 'pt_inception-2015-12-05-6726825d.pth'


def sha256(path: str) -> str:
  """Hex SHA-256 of a file."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def check_digest(path: str, expected: Optional[str] = None) -> str:
  """Returns the file's SHA-256; raises if it contradicts the expectation.

  Args:
    path: the .pth file.
    expected: full or prefix hex digest; default: the 8-hex suffix of a
      torch-hub style name ('name-<8 hex>.pth'), if the name has one.

  Raises:
    ValueError: the digest does not start with the expected prefix.
  """
  if expected is None:
    match = re.search(r'-([0-9a-f]{8,})\.pth$', os.path.basename(path))
    expected = match.group(1) if match else None
  digest = sha256(path)
  if expected and not digest.startswith(expected.lower()):
    raise ValueError(f'{path}: SHA-256 {digest} does not start with '
                     f'{expected}; the file is corrupt or not the FID '
                     'Inception weights.')
  return digest


def convert(state: Dict[str, np.ndarray], digest: str, output: str) -> None:
  """Checks the arrays against the Flax model, then writes the .npz."""
  state = {k: np.asarray(v, np.float32) for k, v in state.items()
           if not k.endswith('num_batches_tracked')}
  inception.params_from_torch_state(state)  # Raises on any mismatch.
  state['meta/source_sha256'] = np.array(digest)
  with open(output, 'wb') as f:
    np.savez(f, **state)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--input', required=True,
                      help=f'pytorch-fid weights ({CANONICAL_NAME})')
  parser.add_argument('--output', required=True, help='.npz to write')
  parser.add_argument('--sha256', default=None,
                      help='expected digest (prefix); default from the name')
  args = parser.parse_args()
  digest = check_digest(args.input, args.sha256)
  import torch  # pylint: disable=g-import-not-at-top
  state = torch.load(args.input, map_location='cpu', weights_only=True)
  convert({k: v.numpy() for k, v in state.items()}, digest, args.output)
  print(f'Wrote {args.output} (source SHA-256 {digest}).')


if __name__ == '__main__':
  main()
