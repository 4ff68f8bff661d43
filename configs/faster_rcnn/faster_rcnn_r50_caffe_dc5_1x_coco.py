# Faster R-CNN with a caffe ResNet-50 DC5 backbone (dilated last stage, one stride-16 map).
_base_ = [
    '../_base_/models/faster_rcnn_r50_caffe_dc5.py',
    '../_base_/datasets/coco_detection_caffe.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
