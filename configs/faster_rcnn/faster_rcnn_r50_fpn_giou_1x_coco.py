# Faster R-CNN R-50 FPN whose R-CNN box loss is the GIoU loss on decoded boxes (weight 10).
_base_ = './faster_rcnn_r50_fpn_1x_coco.py'
model = dict(
    roi_head=dict(
        bbox_head=dict(
            reg_decoded_bbox=True,
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))))
