_base_ = '../mask_rcnn/mask_rcnn_x101_32x4d_fpn_1x_coco.py'
# fp16 training as mmdetection v2: a static loss scale of 512.
fp16 = dict(loss_scale=512.)
