# Mask R-CNN, caffe ResNet-50 C4, mmdetection v2.28 values: Faster R-CNN C4 plus a conv-free mask head
# on the shared head's res5 output (the box RoI features are reused: no mask RoI extractor), 14x14 masks.
# One deliberate difference: mmdet's mask_rcnn_r50_caffe_c4.py leaves res5 (the shared head) without
# init_cfg, so it starts random there; here it loads from the ImageNet file as in the Faster R-CNN C4 base.
_base_ = './faster_rcnn_r50_caffe_c4.py'
model = dict(
    type='MaskRCNN',
    roi_head=dict(
        mask_roi_extractor=None,
        mask_head=dict(
            type='FCNMaskHead',
            num_convs=0,
            in_channels=2048,
            conv_out_channels=256,
            num_classes=80,
            loss_mask=dict(type='CrossEntropyLoss', use_mask=True, loss_weight=1.0))),
    train_cfg=dict(rpn=dict(allowed_border=0), rcnn=dict(mask_size=14)),
    test_cfg=dict(rcnn=dict(mask_thr_binary=0.5)))
