# Faster R-CNN from scratch on the synthetic shapes, sized for a 2-core CPU like the Mask R-CNN main job
# (half-width ResNet-18 with trainable BatchNorm, 64-channel FPN, light box head), bf16 master weights.
_base_ = [
    '../_base_/models/faster_rcnn_r50_fpn.py',
    '../_base_/datasets/shapes_detection.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
width = 64
model = dict(
    backbone=dict(depth=18, base_channels=32, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=width, num_outs=5),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(roi_layer=dict(sampling_ratio=2), out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))
fp16 = dict(dtype='auto', mode='master')
data = dict(samples_per_gpu=8, workers_per_gpu=1)
# one intra-op thread for the model, one core for the data worker (see the Mask R-CNN config)
cpu_threads = 1
optimizer = dict(lr=0.04)
lr_config = dict(warmup_iters=100, step=[10, 12])
runner = dict(max_epochs=13)
log_config = dict(interval=10)
evaluation = dict(interval=13, metric='bbox')
checkpoint_config = dict(interval=1, max_keep_ckpts=2)
