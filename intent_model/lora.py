"""Low-rank adapters for training: every Linear of the transformer blocks gets a trainable
`scale * B @ A` beside its frozen weight, and the blocks' biases and LayerNorms train in full.

What training changes is therefore small enough to ship in the repository and exact to merge
into the base weights at load (`embed_service.adapter`), so the served model costs nothing
extra. B starts at zero: step 0 is the base model.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from embed_service.adapter import FACTOR_A, FACTOR_B


class LoRALinear(torch.nn.Module):
    """`linear(x) + scale * x @ A.T @ B.T` with the wrapped Linear frozen (its bias trains)."""

    def __init__(self, linear: torch.nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.linear = linear
        linear.weight.requires_grad_(False)
        self.lora_A = torch.nn.Parameter(torch.empty(rank, linear.in_features))
        self.lora_B = torch.nn.Parameter(torch.zeros(linear.out_features, rank))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scale = alpha / rank
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = torch.nn.functional.linear(self.dropout(x), self.lora_A)
        return self.linear(x) + self.scale * torch.nn.functional.linear(low, self.lora_B)

    def delta(self) -> torch.Tensor:
        """What merging adds to the frozen weight."""
        return self.scale * (self.lora_B @ self.lora_A)


def add_adapters(model: Any, rank: int, alpha: float, dropout: float = 0.0,
                 first_layer: int = 0) -> list[str]:  # fmt: skip
    """Wraps every Linear of `model.encoder.layer` from block `first_layer` up in place, freezes
    all else but those blocks' biases and LayerNorms; returns the wrapped modules' names
    (relative to `model`)."""
    for param in model.parameters():
        param.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if not name.startswith("encoder.layer.") or int(name.split(".")[2]) < first_layer:
            continue
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{name}.{child_name}")
                if child.bias is not None:
                    child.bias.requires_grad_(True)
            elif isinstance(child, torch.nn.LayerNorm):
                for p in child.parameters():
                    p.requires_grad_(True)
    return wrapped


def adapter_tensors(model: Any) -> dict[str, torch.Tensor]:
    """The adapter as `embed_service.adapter` stores it: low-rank factors (scale folded into B)
    for each wrapped Linear, and the full value of every other trained tensor, keyed by the
    base model's parameter names."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            out[f"{name}.weight.{FACTOR_A}"] = module.lora_A.detach().float().contiguous()
            out[f"{name}.weight.{FACTOR_B}"] = (
                (module.scale * module.lora_B).detach().float().contiguous()
            )
    for name, param in model.named_parameters():
        if param.requires_grad and ".lora_" not in name:
            out[name.replace(".linear.", ".")] = param.detach().float().contiguous()
    return out


def load_adapter_tensors(model: Any, tensors: dict[str, torch.Tensor]) -> None:
    """The inverse of `adapter_tensors`: sets the adapters and trained tensors of `model` (in
    place) so that it computes what `tensors` merged into the base computes."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoRALinear):
                module.lora_A.copy_(tensors[f"{name}.weight.{FACTOR_A}"])
                module.lora_B.copy_(tensors[f"{name}.weight.{FACTOR_B}"] / module.scale)
        for name, param in params.items():
            if param.requires_grad and ".lora_" not in name:
                param.copy_(tensors[name.replace(".linear.", ".")])


def merged_state(model: Any) -> dict[str, torch.Tensor]:
    """The model's state dict with every adapter merged, under the base model's names."""
    state = {}
    for name, value in model.state_dict().items():
        if ".lora_" in name:
            continue
        state[name.replace(".linear.", ".")] = value.detach().clone()
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            state[f"{name}.weight"] = (module.linear.weight + module.delta()).detach().clone()
    return state
