# Faster R-CNN with a caffe ResNet-50 C4 backbone and res5 as the RoI head's shared head.
_base_ = [
    '../_base_/models/faster_rcnn_r50_caffe_c4.py',
    '../_base_/datasets/coco_detection_caffe.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
