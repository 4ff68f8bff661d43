checkpoint_config = dict(interval=1)
log_config = dict(interval=50, hooks=[dict(type='TextLoggerHook'), dict(type='JsonLoggerHook')])
custom_hooks = [dict(type='NumClassCheckHook')]
dist_params = dict(backend='nccl')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
opencv_num_threads = 0
# multiprocessing start method of the data workers, as mmdetection v2's default runtime
mp_start_method = 'fork'
# optimizer.lr is for this total batch size; tools/train.py --auto-scale-lr scales it to the real one
auto_scale_lr = dict(enable=False, base_batch_size=16)
cpu_threads = None
