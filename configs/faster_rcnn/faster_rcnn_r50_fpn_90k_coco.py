# Faster R-CNN R-50 FPN on detectron2's iteration schedule: 90k iterations (about 12 COCO epochs at
# batch 16), lr steps at 60k and 80k; checkpoints (iter_N.pth), logs and evaluation count iterations.
_base_ = './faster_rcnn_r50_fpn_1x_coco.py'
lr_config = dict(step=[60000, 80000])
runner = dict(_delete_=True, type='IterBasedRunner', max_iters=90000)
checkpoint_config = dict(interval=10000)
evaluation = dict(interval=10000, metric='bbox')
