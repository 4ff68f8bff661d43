# Mask R-CNN R-50 FPN on the 3x multi-scale schedule with polygon mask targets (mmdetection v2's 3x recipe).
_base_ = ['../_base_/models/mask_rcnn_r50_fpn.py', '../common/mstrain-poly_3x_coco_instance.py']
