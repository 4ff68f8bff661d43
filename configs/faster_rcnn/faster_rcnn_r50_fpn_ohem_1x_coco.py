# Faster R-CNN R-50 FPN with online hard example mining: the R-CNN sampler keeps the RoIs of highest loss.
_base_ = './faster_rcnn_r50_fpn_1x_coco.py'
model = dict(train_cfg=dict(rcnn=dict(sampler=dict(type='OHEMSampler'))))
