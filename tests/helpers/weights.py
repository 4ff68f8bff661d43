"""Weights that make every layer count in a comparison of two implementations."""
import torch


def randomise_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Spread-out weights and BN statistics (so every layer matters in a comparison)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith('running_var'):
                t.copy_(noise.abs() + 0.5)
            elif t.ndim == 1:
                t.copy_(1.0 + 0.1 * noise if name.endswith('weight') else 0.1 * noise)
            else:
                t.copy_(noise * (2.0 / t[0].numel()) ** 0.5)
    return module
