# Faster R-CNN, caffe ResNet-50 C4, mmdetection v2.28 values: RPN and RoIs on C4 (stride 16), no FPN;
# the backbone's last stage (res5) runs on each 14x14 RoI as the RoI head's shared head.
_base_ = './faster_rcnn_r50_fpn.py'
norm_cfg = dict(type='BN', requires_grad=False)
model = dict(
    backbone=dict(
        num_stages=3,
        strides=(1, 2, 2),
        dilations=(1, 1, 1),
        out_indices=(2, ),
        norm_cfg=norm_cfg,
        style='caffe',
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://detectron2/resnet50_caffe')),
    neck=None,
    rpn_head=dict(
        in_channels=1024,
        feat_channels=1024,
        anchor_generator=dict(scales=[2, 4, 8, 16, 32], strides=[16])),
    roi_head=dict(
        shared_head=dict(
            type='ResLayer',
            depth=50,
            stage=3,
            stride=2,
            dilation=1,
            style='caffe',
            norm_cfg=norm_cfg,
            norm_eval=True,
            # res5 of the same ImageNet file (its keys are layer4.*)
            init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://detectron2/resnet50_caffe')),
        bbox_roi_extractor=dict(
            roi_layer=dict(output_size=14),
            out_channels=1024,
            featmap_strides=[16]),
        bbox_head=dict(
            _delete_=True,
            type='BBoxHead',
            with_avg_pool=True,
            roi_feat_size=7,
            in_channels=2048,
            num_classes=80,
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0., 0., 0., 0.],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            reg_class_agnostic=False,
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='L1Loss', loss_weight=1.0))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=12000, max_per_img=2000)),
    test_cfg=dict(
        rpn=dict(nms_pre=6000, max_per_img=1000)))
