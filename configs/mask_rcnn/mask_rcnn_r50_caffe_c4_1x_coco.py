# Mask R-CNN with a caffe ResNet-50 C4 backbone; res5 is the RoI head's shared head for boxes and masks.
_base_ = [
    '../_base_/models/mask_rcnn_r50_caffe_c4.py',
    '../_base_/datasets/coco_instance_caffe.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
# mmdetection v2.28's file halves the learning rate for this model
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001)
