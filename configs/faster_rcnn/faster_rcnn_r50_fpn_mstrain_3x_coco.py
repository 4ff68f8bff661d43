# Faster R-CNN R-50 FPN on the 3x multi-scale schedule (shorter side 640..800, train set repeated 3x).
_base_ = ['../_base_/models/faster_rcnn_r50_fpn.py', '../common/mstrain_3x_coco.py']
