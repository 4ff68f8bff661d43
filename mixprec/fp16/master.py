"""fp32 master parameters: the optimizer's copy of a half model's trainable weights."""
from __future__ import annotations

from operator import attrgetter
from typing import Optional, Sequence

import torch
from torch import nn

from .flat import all_attached, flat_views, homogeneous_groups

_VERSION = attrgetter('_version')
_KIND = attrgetter('dtype', 'device')


class MasterParams:
    """fp32 masters for ``module``'s parameters, swapped into ``optimizer`` in place of them.

    Build it while the model is still fp32 (before ``wrap_fp16_model``) so the masters start from
    the exact fp32 values. Trainable parameters (in the optimizer and requiring grad) get masters
    that are views of one flat fp32 buffer [N], with ``.grad`` views of a second one, ordered as
    the model will be after conversion: half parameters first, then those that stay fp32
    (``fp32_ids``: norm layers, ``fp32_modules``), so the model's flat gradient buffers map onto
    ``grad_flat`` slice by slice. Other parameters (frozen stages) get fp32 copies, so that
    checkpoints hold their exact fp32 values rather than the half model's rounding.

    The masters follow the model: ``model.load_state_dict`` (also on a submodule) writes the
    incoming fp32 values into the masters exactly, and :meth:`sync_from_model` takes any other
    in-place write to a model parameter (``p.copy_``, ``p.mul_`` under ``no_grad``: they bump
    ``p._version``) into its master, so the next step does not revert it.

    Attributes:
        names / model_params / params: the trainable parameters' names, model tensors and
            masters, in flat order.
        flat / grad_flat: fp32 [N] buffers behind ``params`` and their grads.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, fp32_ids: set[int]) -> None:
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group['params']}
        named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
        trainable = [(n, p) for n, p in named if p.requires_grad and id(p) in in_optimizer]
        trainable.sort(key=lambda item: id(item[1]) in fp32_ids)
        devices = {p.device for _, p in named}
        if len(devices) > 1:
            raise NotImplementedError(f'Fp16OptimizerHook: the model spans several devices {devices}; '
                                      'master mode supports one device per process')
        self.names = [n for n, _ in trainable]
        self.model_params = [p for _, p in trainable]
        self.half_numel = sum(p.numel() for p in self.model_params if id(p) not in fp32_ids)
        self.params: list[nn.Parameter] = []
        self.grad_views: list[torch.Tensor] = []
        self.flat: Optional[torch.Tensor] = None
        self.grad_flat: Optional[torch.Tensor] = None
        if trainable:
            self.flat, views = flat_views(self.model_params, torch.float32)
            self.grad_flat, self.grad_views = flat_views(self.model_params, torch.float32)
            with torch.no_grad():
                for dst, src in homogeneous_groups(views, [p.detach() for p in self.model_params]):
                    torch._foreach_copy_(dst, src)
            self.params = [nn.Parameter(v) for v in views]
            for master, grad in zip(self.params, self.grad_views):
                master.grad = grad
        trainable_ids = {id(p) for p in self.model_params}
        frozen = [p for _, p in named if id(p) not in trainable_ids]
        self._live = self.model_params + frozen
        self._copies = self.params + [nn.Parameter(p.detach().float().clone(), requires_grad=False)
                                      for p in frozen]
        self._master_of = {id(p): m for p, m in zip(self._live, self._copies)}
        self._versions: list[int] = []
        self._copy_kinds: list[tuple] = []
        self._copy_groups: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self._swap_into(optimizer)
        load_hook = _LoadHook(self)
        self._hooks = [m.register_load_state_dict_pre_hook(load_hook)
                       for m in module.modules() if any(id(p) in self._master_of for p in m._parameters.values()
                                                        if p is not None)]

    def _swap_into(self, optimizer: torch.optim.Optimizer) -> None:
        """Replace model parameters by masters in ``param_groups`` and move any loaded state (a
        resumed optimizer's momentum) from the old keys to the masters."""
        for group in optimizer.param_groups:
            group['params'] = [self._master_of.get(id(p), p) for p in group['params']]
        for old in list(optimizer.state.keys()):
            master = self._master_of.get(id(old))
            if master is not None:
                optimizer.state[master] = optimizer.state.pop(old)

    @torch.no_grad()
    def fp32_copies(self) -> dict[int, torch.Tensor]:
        """``{id(model parameter): its fp32 copy}``: the optimizer's masters and the frozen parameters' copies."""
        return dict(self._master_of)

    @torch.no_grad()
    def load_into_masters(self, module: nn.Module, state_dict: dict, prefix: str) -> None:
        """Before ``module`` loads its own parameters: the incoming fp32 values into the masters."""
        for name, param in module._parameters.items():
            master = self._master_of.get(id(param)) if param is not None else None
            value = state_dict.get(prefix + name)
            if master is not None and isinstance(value, torch.Tensor) and value.shape == master.shape:
                master.copy_(value)

    def record_versions(self) -> None:
        """Remember the model parameters' version counters (after conversion or a copy back)."""
        self._versions = list(map(_VERSION, self._live))

    @torch.no_grad()
    def sync_from_model(self, compare_all: bool = False) -> list[str]:
        """Take in-place writes to model parameters into their masters; returns the names changed.

        A parameter whose version counter moved, or every parameter with ``compare_all`` (at a
        checkpoint: also catches writes through ``.data``, which bump no counter), is compared with
        its master rounded to its dtype; where they differ the master becomes the model's value.
        When nothing moved this is one C-level comparison of two lists of ints."""
        versions = list(map(_VERSION, self._live))
        if versions == self._versions and not compare_all:
            return []
        changed = []
        for i, (live, copy) in enumerate(zip(self._live, self._copies)):
            if (compare_all or versions[i] != self._versions[i]) and not torch.equal(live, copy.to(live.dtype)):
                copy.copy_(live)
                changed.append(i)
        self._versions = versions
        return changed

    def attach_grads(self, untouched: Sequence[int] = ()) -> None:
        """Master ``.grad`` = its view, or None for ``untouched`` (no gradient in this window: the
        optimizer then skips it, as fp32's does); repairs what ``optimizer.zero_grad()`` dropped.
        When every master already has its view this is one C-level identity check."""
        if not untouched and all_attached(self.params, self.grad_views):
            return
        for master, grad in zip(self.params, self.grad_views):
            master.grad = grad
        for i in untouched:
            self.params[i].grad = None

    def copy_grads_from(self, model_grad_flats: list[torch.Tensor]) -> None:
        """Copy the model's flat gradient buffers (half run, then fp32 run) into ``grad_flat``."""
        offset = 0
        for flat in model_grad_flats:
            self.grad_flat[offset:offset + flat.numel()].copy_(flat)
            offset += flat.numel()

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Write the masters back into the model's (half and fp32) parameters: one
        ``_foreach_copy_`` per destination dtype and device (see :func:`homogeneous_groups`). The
        groups are rebuilt only when a parameter's dtype or device changed (a C-level comparison)."""
        if self.params:
            kinds = list(map(_KIND, self.model_params))
            if kinds != self._copy_kinds:
                self._copy_groups = homogeneous_groups(self.model_params, self.params)
                self._copy_kinds = kinds
            for dst, src in self._copy_groups:
                torch._foreach_copy_(dst, src)
        self.record_versions()

    @torch.no_grad()
    def mismatches(self) -> list[str]:
        """Names of the trainable model parameters that differ from their master cast to their own
        dtype; empty after :meth:`copy_to_model` (a check for tests and the GPU check, not the hot path)."""
        return [name for name, live, master in zip(self.names, self.model_params, self.params)
                if not torch.equal(live, master.to(live.dtype))]

    def fp32_state_dict(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``module.state_dict()`` keys with fp32 values, copied to the CPU (for checkpoints):
        masters for parameters, buffers upcast."""
        self.sync_from_model(compare_all=True)
        out = {}
        for key, value in module.state_dict(keep_vars=True).items():
            master = self._master_of.get(id(value))
            if master is not None:
                value = master
            dtype = torch.float32 if value.is_floating_point() else value.dtype
            out[key] = value.detach().to('cpu', dtype, copy=True)
        return out


class _LoadHook:
    """``load_state_dict`` pre-hook of the converted modules. A deep copy of the model (an EMA
    copy) shares it: its parameters have no masters, so loading the copy changes nothing here."""

    def __init__(self, masters: MasterParams) -> None:
        self.masters = masters

    def __call__(self, module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        self.masters.load_into_masters(module, state_dict, prefix)

    def __deepcopy__(self, memo: dict) -> '_LoadHook':
        return self
