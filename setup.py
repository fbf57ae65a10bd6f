"""xmcgan_jax: XMC-GAN text-to-image GAN in JAX/Flax."""

import setuptools

setuptools.setup(
    name='xmcgan_jax',
    version='0.1.0',
    description=('XMC-GAN (cross-modal contrastive text-to-image GAN, '
                 'CVPR 2021) in JAX/Flax for TPU pods, GPUs and CPUs.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['xmcgan_jax', 'xmcgan_jax.*']),
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.7',
        'flax>=0.10',
        'optax>=0.2',
        'numpy>=1.26',
        'tensorflow-datasets>=4.9',
        'tensorflow-text>=2.15',
        'clu>=0.0.10',
        'ml-collections>=0.1.1',
        'orbax-checkpoint>=0.6',
        'safetensors>=0.4',  # Hugging Face weights as numpy, no torch.
        'tokenizers>=0.15',  # WordPiece for sampling without TensorFlow.
        # TFDS needs it (via etils) to prepare builders defined outside TFDS.
        'importlib_resources',
        'pillow',  # PNG sample grids with rendered captions.
        'tensorboard',  # clu's summary writer needs it.
    ],
    extras_require={
        'test': ['pytest>=7', 'pytest-xdist', 'nbclient', 'nbformat',
                 'ipykernel'],
    },
    license='Apache 2.0',
)
