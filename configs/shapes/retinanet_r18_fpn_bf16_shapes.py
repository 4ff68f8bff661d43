# RetinaNet from scratch on the synthetic shapes, sized for a 2-core CPU: half-width ResNet-18 with
# trainable BatchNorm, 64-channel FPN from C3 with the C5-based extra levels, a 2-conv head with
# GroupNorm (shared over the levels, as mmdetection's GN heads) and smaller anchors for 256 px images,
# bf16 master weights. Without the head's GN the from-scratch classifier learns slowly at lr 0.01
# (box AP 0.155 after 13 epochs) and collapses to a constant score at 0.02.
_base_ = [
    '../_base_/models/retinanet_r50_fpn.py',
    '../_base_/datasets/shapes_detection.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
width = 64
model = dict(
    backbone=dict(depth=18, base_channels=32, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=width, start_level=1, num_outs=5),
    bbox_head=dict(num_classes=3, in_channels=width, feat_channels=width, stacked_convs=2,
                   norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
                   anchor_generator=dict(octave_base_scale=3)))
fp16 = dict(dtype='auto', mode='master')
data = dict(samples_per_gpu=8, workers_per_gpu=1)
# one intra-op thread for the model, one core for the data worker (see the Mask R-CNN config)
cpu_threads = 1
optimizer = dict(lr=0.02)
optimizer_config = dict(_delete_=True, grad_clip=dict(max_norm=35, norm_type=2))
lr_config = dict(warmup_iters=100, step=[13, 15])
runner = dict(max_epochs=16)  # 13 epochs left one seed of three at box AP 0.41, still learning
log_config = dict(interval=10)
evaluation = dict(interval=16, metric='bbox')
checkpoint_config = dict(interval=1, max_keep_ckpts=2)
