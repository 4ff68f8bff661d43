_base_ = '../mask_rcnn/mask_rcnn_r50_caffe_c4_1x_coco.py'
# fp16 training as mmdetection v2: a static loss scale of 512.
fp16 = dict(loss_scale=512.)
