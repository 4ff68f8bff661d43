"""Run by torchrun in tests: the toy model trained with DDP on gloo; each rank saves its weights."""
import os
import sys

import torch
from torch.utils.data.distributed import DistributedSampler

from helpers.toy import ToyDataset, toy_collate, ToyModel
from mixprec.engine import Runner, close_dist, get_dist_info, get_logger, init_dist


def main(work_dir: str) -> None:
    torch.set_num_threads(1)
    init_dist('pytorch')
    rank, world = get_dist_info()
    torch.manual_seed(rank)
    model = torch.nn.parallel.DistributedDataParallel(ToyModel())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dataset = ToyDataset(16)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=DistributedSampler(dataset, world, rank),
                                         collate_fn=toy_collate)
    logger = get_logger(log_file=os.path.join(work_dir, 'train.log'))
    runner = Runner(model, optimizer, work_dir=work_dir, logger=logger, max_epochs=2, meta=dict(seed=0))
    runner.register_training_hooks(dict(policy='step', step=[1]), dict(grad_clip=None), dict(interval=1),
                                   dict(interval=1, hooks=[dict(type='TextLoggerHook'), dict(type='JsonLoggerHook')]),
                                   [dict(type='DistSamplerSeedHook')])
    runner.run(loader)
    torch.save(model.module.state_dict(), os.path.join(work_dir, f'weights_rank{rank}.pt'))
    close_dist()


if __name__ == '__main__':
    main(sys.argv[1])
