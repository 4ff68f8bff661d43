# The main job: Mask R-CNN trained from scratch on the synthetic shapes, bf16 master weights on the CPU
# (fp16 on a GPU through dtype='auto'), sized for a 2-core CPU: a half-width ResNet-18 with trainable
# BatchNorm, a 64-channel FPN, light RoI heads, small images and fewer proposals.
_base_ = [
    '../_base_/models/mask_rcnn_r50_fpn.py',
    '../_base_/datasets/shapes_instance.py',
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
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(roi_layer=dict(sampling_ratio=2), out_channels=width),
        mask_head=dict(num_convs=2, in_channels=width, conv_out_channels=width, num_classes=3)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=300),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))
fp16 = dict(dtype='auto', mode='master')
data = dict(samples_per_gpu=8, workers_per_gpu=1)
# one intra-op thread for the model, one core for the data worker: steady on a 2-core CPU that also
# runs other work, where two OpenMP threads beside the worker wait on each other and run many times
# slower; on an idle machine cpu_threads=2 is faster (README, 'What the main job reaches')
cpu_threads = 1
# lr 0.03 for 8 images a batch: at 0.04 one seed in three wandered off mid-training (box AP 0.27 against
# 0.61-0.66); at 0.03 seeds 0-2 give 0.58-0.63 (README, 'What the main job reaches')
optimizer = dict(lr=0.03)
lr_config = dict(warmup_iters=100, step=[10, 12])
runner = dict(max_epochs=13)
log_config = dict(interval=10)
evaluation = dict(interval=13, metric=['bbox', 'segm'])
checkpoint_config = dict(interval=1, max_keep_ckpts=2)
