"""Steps whose loss or gradients are not finite are skipped on the device, without a host sync per step.

The gradient norm that clipping computes anyway is non-finite exactly when the loss or a gradient is. The
fused AdamW kernel takes a `found_inf` flag (the mechanism GradScaler uses) and leaves weights, moments and
step counts untouched when it is set; BatchNorm's running statistics, which the forward pass already updated,
are put back from a copy taken before it. The counts stay on the device and are read where the loop syncs
anyway (every --log-every steps).
"""

import torch
from torch import nn


class NonFiniteGuard:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
        self.optimizer = optimizer
        # Fused AdamW honours found_inf; other optimizers are checked with a host sync each step.
        self.on_device = bool(optimizer.defaults.get("fused"))
        self.buffers = [buffer for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)
                        for buffer in (module.running_mean, module.running_var, module.num_batches_tracked)
                        if buffer is not None]
        self.saved = [buffer.clone() for buffer in self.buffers]
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)  # in the whole run
        self.in_a_row = torch.zeros((), dtype=torch.int64, device=device)

    def before_forward(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)

    def before_step(self, grad_norm: torch.Tensor) -> bool:
        """Flag the coming optimizer step; False when it must not run at all (host-checked optimizers only)."""
        bad = ~torch.isfinite(grad_norm)
        self._bad = bad
        if self.on_device:
            self.optimizer.found_inf = bad.float()  # type: ignore[attr-defined]
            return True
        return not bool(bad)

    def after_step(self) -> None:
        bad = self._bad
        for buffer, saved in zip(self.buffers, self.saved):
            buffer.copy_(torch.where(bad, saved, buffer))
        self.skipped += bad
        self.in_a_row.mul_(bad).add_(bad)

    def counts(self) -> tuple[int, int]:
        """(steps skipped in the run, skipped in a row up to now): a host sync."""
        return int(self.skipped), int(self.in_a_row)
