"""AdamW with linear warm-up then poly decay: the RWKV-SSS trainer's optimiser and schedule.

Why not nnU-Net's SGD (momentum 0.99, lr 1e-2)? Linear-attention and token-mix blocks are
usually trained with AdamW and a warm-up: the WKV decay/bonus and the mix coefficients are
per-channel scalars that a large momentum step throws far off their depth-graded init.
nnUNetTrainerRWKVSSS_SGD keeps nnU-Net's schedule so that the choice can be measured.
"""
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.optim.lr_scheduler import LRScheduler

# Only the weights of these layers are decayed. Everything else - biases, norm affines and the
# bare per-channel parameters of the RWKV blocks (WKV decay and bonus, token-shift mix, scan
# merge weights) - is a scale or an offset that weight decay would pull towards zero.
DECAYED_LAYERS = (_ConvNd, nn.Linear)


def adamw_param_groups(network: nn.Module, weight_decay: float, wkv_lr_scale: float = 1.0) -> list:
    """AdamW parameter groups: [decayed layer weights, everything else with decay 0], and with
    wkv_lr_scale != 1 a third group, the WKV's decay and bonus, whose rate the scheduler scales by
    it (`lr_scale`). Why: per-channel scalars move about lr per step under Adam, so at lr 1e-3 a
    1,000-step budget leaves the decay near its init (docs/results.md, the probe)."""
    from nnunet_sss.network.spatial_mix import SpatialMix

    decay, no_decay, fast, seen = [], [], [], set()
    for module in network.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if name == "weight" and isinstance(module, DECAYED_LAYERS):
                decay.append(param)
            elif wkv_lr_scale != 1.0 and isinstance(module, SpatialMix) and name in ("decay", "bonus"):
                fast.append(param)
            else:
                no_decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if wkv_lr_scale != 1.0:  # two groups otherwise, as checkpoints of the default trainers hold them
        if not fast:
            raise ValueError(f"wkv_lr_scale={wkv_lr_scale} but the network has no WKV decay or bonus to scale")
        groups.append({"params": fast, "weight_decay": 0.0, "lr_scale": wkv_lr_scale})
    return groups


def warmup_poly_lr(epoch: float, peak_lr: float, num_epochs: int, warmup_epochs: float,
                   exponent: float = 0.9, start_factor: float = 0.01) -> float:
    """Learning rate at a (fractional) epoch: linear from start_factor * peak_lr to peak_lr over
    warmup_epochs, then nnU-Net's poly decay to 0 at num_epochs."""
    if epoch < warmup_epochs:
        return peak_lr * (start_factor + (1 - start_factor) * epoch / warmup_epochs)
    progress = (epoch - warmup_epochs) / max(num_epochs - warmup_epochs, 1e-8)
    return peak_lr * max(0.0, 1 - progress) ** exponent


class WarmupPolyLRScheduler(LRScheduler):
    """`step(epoch)` sets the rate for a fractional epoch, so the rate is a pure function of
    where training is (epoch, iteration): a run continued with `--c` follows exactly the
    schedule of an uninterrupted one. nnU-Net calls step(current_epoch) at each epoch start;
    the trainer also steps within warm-up epochs, per iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, num_epochs: int,
                 warmup_epochs: float, exponent: float = 0.9):
        self.peak_lr, self.num_epochs = peak_lr, num_epochs
        self.warmup_epochs, self.exponent = warmup_epochs, exponent
        self.epoch = 0.0
        super().__init__(optimizer)

    def step(self, epoch: float = None):
        if epoch is not None:
            self.epoch = float(epoch)
        lr = warmup_poly_lr(self.epoch, self.peak_lr, self.num_epochs, self.warmup_epochs, self.exponent)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def in_warmup(self, epoch: float) -> bool:
        return epoch < self.warmup_epochs
