# Faster R-CNN, caffe ResNet-50 DC5, mmdetection v2.28 values: the last stage dilated (stride 1,
# dilation 2), so RPN and RoIs run on one stride-16 map of 2048 channels; no FPN.
_base_ = './faster_rcnn_r50_fpn.py'
norm_cfg = dict(type='BN', requires_grad=False)
model = dict(
    backbone=dict(
        strides=(1, 2, 2, 1),
        dilations=(1, 1, 1, 2),
        out_indices=(3, ),
        norm_cfg=norm_cfg,
        style='caffe',
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://detectron2/resnet50_caffe')),
    neck=None,
    rpn_head=dict(
        in_channels=2048,
        feat_channels=2048,
        anchor_generator=dict(scales=[2, 4, 8, 16, 32], strides=[16])),
    roi_head=dict(
        bbox_roi_extractor=dict(
            roi_layer=dict(output_size=7),
            out_channels=2048,
            featmap_strides=[16]),
        bbox_head=dict(in_channels=2048)),
    train_cfg=dict(
        rpn=dict(allowed_border=0),  # RPN trains only on anchors inside the image
        rpn_proposal=dict(nms_pre=12000, max_per_img=2000)),
    test_cfg=dict(
        rpn=dict(nms_pre=6000, max_per_img=1000)))
