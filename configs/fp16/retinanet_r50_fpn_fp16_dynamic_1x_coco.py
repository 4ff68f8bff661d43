_base_ = '../retinanet/retinanet_r50_fpn_1x_coco.py'
# fp16 training with dynamic loss scaling (start 2**16, halve on overflow, double after 1000 clean steps).
fp16 = dict(loss_scale='dynamic')
