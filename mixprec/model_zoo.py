"""Names of pretrained weights and their URLs (data), as mmcv 1.x resolved them.

Subsets of mmcv's ``model_zoo/open_mmlab.json``, ``deprecated.json``, ``mmcls.json`` and
``torchvision_0.12.json`` (the copies in mmengine 0.10's ``hub/``): the backbones of mmdetection
v2.28's Faster / Mask R-CNN and RetinaNet configs plus the common ResNet-family ones.
:func:`mixprec.checkpoint.resolve_checkpoint_path` maps a URL to
``$TORCH_HOME/hub/checkpoints/<basename>``; nothing is ever downloaded.
"""

_OPENMMLAB = 'https://download.openmmlab.com/pretrain/third_party/'
_MMCLS = 'https://download.openmmlab.com/mmclassification/v0/'
_TORCHVISION = 'https://download.pytorch.org/models/'

OPEN_MMLAB = {
    'vgg16_caffe': _OPENMMLAB + 'vgg16_caffe-292e1171.pth',
    'detectron/resnet50_caffe': _OPENMMLAB + 'resnet50_caffe-788b5fa3.pth',
    'detectron2/resnet50_caffe': _OPENMMLAB + 'resnet50_msra-5891d200.pth',
    'detectron/resnet101_caffe': _OPENMMLAB + 'resnet101_caffe-3ad79236.pth',
    'detectron2/resnet101_caffe': _OPENMMLAB + 'resnet101_msra-6cc46731.pth',
    'detectron2/resnext101_32x8d': _OPENMMLAB + 'resnext101_32x8d-1516f1aa.pth',
    'resnext50_32x4d': _OPENMMLAB + 'resnext50-32x4d-0ab1a123.pth',
    'resnext101_32x4d': _OPENMMLAB + 'resnext101_32x4d-a5af3160.pth',
    'resnext101_64x4d': _OPENMMLAB + 'resnext101_64x4d-ee2c6f71.pth',
    'contrib/resnet50_gn': _OPENMMLAB + 'resnet50_gn_thangvubk-ad1730dd.pth',
    'detectron/resnet50_gn': _OPENMMLAB + 'resnet50_gn-9186a21c.pth',
    'detectron/resnet101_gn': _OPENMMLAB + 'resnet101_gn-cac0ab98.pth',
    'msra/hrnetv2_w18_small': _OPENMMLAB + 'hrnetv2_w18_small-b5a04e21.pth',
    'msra/hrnetv2_w18': _OPENMMLAB + 'hrnetv2_w18-00eb2006.pth',
    'msra/hrnetv2_w32': _OPENMMLAB + 'hrnetv2_w32-dc9eeb4f.pth',
    'msra/hrnetv2_w40': _OPENMMLAB + 'hrnetv2_w40-ed0b031c.pth',
    'msra/hrnetv2_w48': _OPENMMLAB + 'hrnetv2_w48-d2186c55.pth',
    'resnet18_v1c': _OPENMMLAB + 'resnet18_v1c-b5776b93.pth',
    'resnet50_v1c': _OPENMMLAB + 'resnet50_v1c-2cccc1ad.pth',
    'resnet101_v1c': _OPENMMLAB + 'resnet101_v1c-e67eebb6.pth',
}

# old open-mmlab:// names and the names they stand for (mmcv warned and followed them)
OPEN_MMLAB_DEPRECATED = {
    'resnet50_caffe': 'detectron/resnet50_caffe',
    'resnet101_caffe': 'detectron/resnet101_caffe',
}

MMCLS = {
    'resnet18': _MMCLS + 'resnet/resnet18_8xb32_in1k_20210831-fbbb1da6.pth',
    'resnet34': _MMCLS + 'resnet/resnet34_8xb32_in1k_20210831-f257d4e6.pth',
    'resnet50': _MMCLS + 'resnet/resnet50_8xb32_in1k_20210831-ea4938fc.pth',
    'resnet101': _MMCLS + 'resnet/resnet101_8xb32_in1k_20210831-539c63f8.pth',
    'resnet152': _MMCLS + 'resnet/resnet152_8xb32_in1k_20210901-4d7582fa.pth',
    'resnext50_32x4d': _MMCLS + 'resnext/resnext50_32x4d_b32x8_imagenet_20210429-56066e27.pth',
    'resnext101_32x4d': _MMCLS + 'resnext/resnext101_32x4d_b32x8_imagenet_20210506-e0fa3dd5.pth',
    'resnext101_32x8d': _MMCLS + 'resnext/resnext101_32x8d_b32x8_imagenet_20210506-23a247d5.pth',
    'resnext152_32x4d': _MMCLS + 'resnext/resnext152_32x4d_b32x8_imagenet_20210524-927787be.pth',
}

TORCHVISION = {
    'resnet18': _TORCHVISION + 'resnet18-f37072fd.pth',
    'resnet34': _TORCHVISION + 'resnet34-b627a593.pth',
    'resnet50': _TORCHVISION + 'resnet50-0676ba61.pth',
    'resnet101': _TORCHVISION + 'resnet101-63fe2227.pth',
    'resnet152': _TORCHVISION + 'resnet152-394f9c45.pth',
    'resnext50_32x4d': _TORCHVISION + 'resnext50_32x4d-7cdf4587.pth',
    'resnext101_32x8d': _TORCHVISION + 'resnext101_32x8d-8ba56ff5.pth',
    'wide_resnet50_2': _TORCHVISION + 'wide_resnet50_2-95faca4d.pth',
    'wide_resnet101_2': _TORCHVISION + 'wide_resnet101_2-32ee1156.pth',
    'vgg16': _TORCHVISION + 'vgg16-397923af.pth',
    'vgg16_bn': _TORCHVISION + 'vgg16_bn-6c64b313.pth',
    'mobilenet_v2': _TORCHVISION + 'mobilenet_v2-b0353104.pth',
}
