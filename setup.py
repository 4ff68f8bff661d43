"""mixprec: mixed-precision detection training in the mmdetection v2 tradition."""
import re
from pathlib import Path

from setuptools import find_packages, setup

version = re.search(r"__version__ = '([^']+)'", Path('mixprec/__init__.py').read_text()).group(1)

setup(
    name='mixprec',
    version=version,
    description='Mixed-precision object detection training (Faster/Mask R-CNN, RetinaNet)',
    long_description=Path('README.md').read_text() if Path('README.md').exists() else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['mixprec', 'mixprec.*']),
    install_requires=[
        # 2.3: CPU kernels of the fused amp unscale/check and torch.amp.GradScaler on any device
        'torch>=2.3',
        'torchvision>=0.18',
        'mmcv-lite>=2.0',
        'mmengine>=0.8',
        'pycocotools>=2.0.6',
        'numpy>=1.23',
        'tqdm>=4.60',
        'matplotlib>=3.5',
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-timeout>=2', 'tensorboard>=2.10', 'faster-coco-eval>=1.6'],
        'eval': ['faster-coco-eval>=1.6'],
        'tensorboard': ['tensorboard>=2.10'],
        'wandb': ['wandb>=0.15'],
        'memory': ['psutil>=5.9', 'memory_profiler>=0.61'],
    },
)
