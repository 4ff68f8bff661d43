"""fp32 master parameters: the optimizer's copy of a half model's trainable weights."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .flat import flat_views
from .wrap import is_norm


class MasterParams:
    """fp32 masters for ``module``'s parameters, swapped into ``optimizer`` in place of them.

    Build it while the model is still fp32 (before ``wrap_fp16_model``) so the masters start from
    the exact fp32 values. Trainable parameters (in the optimizer and requiring grad) get masters
    that are views of one flat fp32 buffer [N], with ``.grad`` views of a second one, ordered as
    the model will be after conversion: half parameters first, then the fp32 norm parameters, so
    the model's flat gradient buffers map onto ``grad_flat`` slice by slice. Other parameters
    (frozen stages) get plain fp32 clones, used only for checkpoints.

    Attributes:
        names / model_params / params: the trainable parameters' names, model tensors and
            masters, in flat order.
        flat / grad_flat: fp32 [N] buffers behind ``params`` and their grads.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group['params']}
        norm_ids = {id(p) for m in module.modules() if is_norm(m) for p in m.parameters(recurse=False)}
        named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
        trainable = [(n, p) for n, p in named if p.requires_grad and id(p) in in_optimizer]
        trainable.sort(key=lambda item: id(item[1]) in norm_ids)
        devices = {p.device for _, p in named}
        if len(devices) > 1:
            raise NotImplementedError(f'Fp16OptimizerHook: the model spans several devices {devices}; '
                                      'master mode supports one device per process')
        self.names = [n for n, _ in trainable]
        self.model_params = [p for _, p in trainable]
        self.half_numel = sum(p.numel() for p in self.model_params if id(p) not in norm_ids)
        self.params: list[nn.Parameter] = []
        self.flat: Optional[torch.Tensor] = None
        self.grad_flat: Optional[torch.Tensor] = None
        if trainable:
            self.flat, views = flat_views(self.model_params, torch.float32)
            self.grad_flat, self.grad_views = flat_views(self.model_params, torch.float32)
            with torch.no_grad():
                torch._foreach_copy_(views, [p.detach() for p in self.model_params])
            self.params = [nn.Parameter(v) for v in views]
            for master, grad in zip(self.params, self.grad_views):
                master.grad = grad
        trainable_ids = {id(p) for p in self.model_params}
        self.frozen = {id(p): nn.Parameter(p.detach().float().clone(), requires_grad=False)
                       for _, p in named if id(p) not in trainable_ids}
        self._master_of = {id(p): m for p, m in zip(self.model_params, self.params)}
        self._master_of.update(self.frozen)
        self._swap_into(optimizer)

    def _swap_into(self, optimizer: torch.optim.Optimizer) -> None:
        """Replace model parameters by masters in ``param_groups`` and move any loaded state (a
        resumed optimizer's momentum) from the old keys to the masters."""
        for group in optimizer.param_groups:
            group['params'] = [self._master_of.get(id(p), p) for p in group['params']]
        for old in list(optimizer.state.keys()):
            master = self._master_of.get(id(old))
            if master is not None:
                optimizer.state[master] = optimizer.state.pop(old)

    def ensure_grads_attached(self) -> None:
        """Re-attach the master grad views if something (``optimizer.zero_grad()``) dropped them."""
        if self.params and self.params[0].grad is not self.grad_views[0]:
            for master, grad in zip(self.params, self.grad_views):
                master.grad = grad

    def copy_grads_from(self, model_grad_flats: list[torch.Tensor]) -> None:
        """Copy the model's flat gradient buffers (half run, then fp32 run) into ``grad_flat``."""
        offset = 0
        for flat in model_grad_flats:
            self.grad_flat[offset:offset + flat.numel()].copy_(flat)
            offset += flat.numel()

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Write the masters back into the model's (half and fp32) parameters."""
        if self.params:
            torch._foreach_copy_(self.model_params, self.params)

    def fp32_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``module.state_dict()`` keys with fp32 values: masters for parameters, buffers upcast."""
        out = {}
        for key, value in module.state_dict(keep_vars=True).items():
            master = self._master_of.get(id(value))
            if master is not None:
                out[key] = master.detach().clone()
            elif value.is_floating_point():
                out[key] = value.detach().float().clone()
            else:
                out[key] = value.detach().clone()
        return out
