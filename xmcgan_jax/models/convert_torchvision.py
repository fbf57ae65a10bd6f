"""Converts torchvision VGG-19 / ResNet-50 weights to an .npz our loader reads.

  python -m xmcgan_jax.models.convert_torchvision --model=vgg19 \
      --input=vgg19-dcbb9e9d.pth --output=vgg19_torchvision.npz

torch is needed here only (to read the .pth); training loads the .npz without
it. Keys are '<keras layer name>/<index>' in Keras weight order (conv/dense:
kernel[, bias]; BatchNorm: scale, bias, mean, var), kernels in Flax layout.
"""

import argparse
from typing import Dict

import numpy as np

_VGG19_CONVS = ['block1_conv1', 'block1_conv2', 'block2_conv1', 'block2_conv2'] + [
    f'block{b}_conv{i}' for b in (3, 4, 5) for i in (1, 2, 3, 4)]


def _conv(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)


def convert_vgg19(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """torchvision vgg19 state dict -> {'layer/i': array}."""
  out = {}
  conv_keys = sorted({int(k.split('.')[1]) for k in state
                      if k.startswith('features.')})
  if len(conv_keys) != len(_VGG19_CONVS):
    raise ValueError(f'Expected {len(_VGG19_CONVS)} VGG-19 convs, found '
                     f'{len(conv_keys)} in the state dict.')
  for index, name in zip(conv_keys, _VGG19_CONVS):
    out[f'{name}/0'] = _conv(state[f'features.{index}.weight'])
    out[f'{name}/1'] = state[f'features.{index}.bias']
  fc1 = state['classifier.0.weight']  # (4096, 512*7*7) in (C, H, W) order.
  fc1 = fc1.reshape(fc1.shape[0], 512, 7, 7).transpose(2, 3, 1, 0)
  out['fc1/0'] = fc1.reshape(-1, fc1.shape[-1])  # Rows in (H, W, C) order.
  out['fc1/1'] = state['classifier.0.bias']
  for torch_index, name in ((3, 'fc2'), (6, 'predictions')):
    out[f'{name}/0'] = state[f'classifier.{torch_index}.weight'].T
    out[f'{name}/1'] = state[f'classifier.{torch_index}.bias']
  return out


def convert_resnet50(state: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """torchvision resnet50 (v1.5) state dict -> {'layer/i': array}."""
  out = {}

  def bn(prefix, name):
    for i, field in enumerate(('weight', 'bias', 'running_mean',
                               'running_var')):
      out[f'{name}/{i}'] = state[f'{prefix}.{field}']

  out['conv1_conv/0'] = _conv(state['conv1.weight'])
  bn('bn1', 'conv1_bn')
  for stage, blocks in enumerate((3, 4, 6, 3), 1):
    for block in range(blocks):
      prefix = f'layer{stage}.{block}'
      name = f'conv{stage + 1}_block{block + 1}'
      for k in (1, 2, 3):
        out[f'{name}_{k}_conv/0'] = _conv(state[f'{prefix}.conv{k}.weight'])
        bn(f'{prefix}.bn{k}', f'{name}_{k}_bn')
      if f'{prefix}.downsample.0.weight' in state:
        out[f'{name}_0_conv/0'] = _conv(state[f'{prefix}.downsample.0.weight'])
        bn(f'{prefix}.downsample.1', f'{name}_0_bn')
  out['predictions/0'] = state['fc.weight'].T
  out['predictions/1'] = state['fc.bias']
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', choices=('vgg19', 'resnet50'), required=True)
  parser.add_argument('--input', required=True, help='torchvision .pth')
  parser.add_argument('--output', required=True, help='.npz to write')
  args = parser.parse_args()
  import torch  # pylint: disable=g-import-not-at-top
  state = torch.load(args.input, map_location='cpu', weights_only=True)
  state = {k: v.numpy() for k, v in state.items()
           if not k.endswith('num_batches_tracked')}
  convert = convert_vgg19 if args.model == 'vgg19' else convert_resnet50
  np.savez(args.output, **{k: np.asarray(v, np.float32)
                           for k, v in convert(state).items()})
  print(f'Wrote {args.output}.')


if __name__ == '__main__':
  main()
