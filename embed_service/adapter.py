"""Where a model's weights come from: a full model directory, or an adapter directory that names
a base model and holds what training changed, merged into the base weights at load.

An adapter directory holds `adapter_config.json` and `adapter.safetensors`. Each tensor is keyed
by a parameter name of the base model: `NAME.lora_A` and `NAME.lora_B` add `lora_B @ lora_A`
to that weight, any other key replaces the parameter. Merging happens once, before the model is
moved or cast, so serving an adapter costs exactly what serving the base costs. The adapter
records the SHA-256 of the base weights it was trained on, and loading refuses a different base:
merged into other weights the same delta would be a different, unmeasured model.

The revision of what is loaded is a content hash of the weight files (base, then adapter), so
`Info`, `/v2/models` and the model card name the same thing.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_FORMAT = "intent-embed-adapter/1"
FACTOR_A, FACTOR_B = "lora_A", "lora_B"
# Weight files transformers may load from a model directory, in the order it prefers them.
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_REVISION_HEX = 12


@dataclass(frozen=True)
class AdapterConfig:
    """`adapter_config.json`: which base the adapter applies to and how it was made."""

    base_package: str | None  # a Python package whose get_model_path() is the base directory
    base_path: str | None  # or the base directory itself (experiments, tests)
    base_sha256: str  # SHA-256 of the base's weight file the adapter was trained against
    rank: int
    format: str = ADAPTER_FORMAT

    def base_dir(self) -> Path:
        if self.base_package:
            package: Any = importlib.import_module(self.base_package)
            return Path(package.get_model_path())
        if self.base_path:
            return Path(self.base_path)
        raise ValueError("an adapter must name its base_package or base_path")


@dataclass(frozen=True)
class ModelSource:
    """The resolved origin of a model: where transformers loads from, the adapter to merge (if
    any) and the revision hash of both together."""

    weights_dir: Path  # the directory transformers, the tokenizer and the pooling files load from
    adapter: dict[str, torch.Tensor] | None
    revision: str

    @classmethod
    def of(cls, directory: Path) -> ModelSource:
        config_file = directory / ADAPTER_CONFIG
        if not config_file.is_file():
            return cls(directory, None, revision_of([weight_file(directory)]))
        config = read_config(directory)
        base = config.base_dir()
        base_file = weight_file(base)
        if file_sha256(base_file) != config.base_sha256:
            raise ValueError(
                f"{directory} was trained on base weights with SHA-256 {config.base_sha256}, "
                f"but {base_file} has another; install the base the adapter was made for"
            )
        adapter_file = directory / ADAPTER_WEIGHTS
        return cls(base, load_file(adapter_file), revision_of([base_file, adapter_file]))


def read_config(directory: Path) -> AdapterConfig:
    raw = json.loads((directory / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if raw.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{directory / ADAPTER_CONFIG}: format must be {ADAPTER_FORMAT!r}")
    return AdapterConfig(
        base_package=raw.get("base_package"),
        base_path=raw.get("base_path"),
        base_sha256=str(raw["base_sha256"]),
        rank=int(raw["rank"]),
    )


def write_adapter(directory: Path, config: AdapterConfig, tensors: dict[str, torch.Tensor]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, directory / ADAPTER_WEIGHTS)
    body = {k: v for k, v in asdict(config).items() if v is not None}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def merge_adapter(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """Adds each low-rank delta to its weight and replaces the other named parameters, in place,
    in float32. Returns the number of parameters changed; an unknown name is an error."""
    params = dict(model.named_parameters())
    changed = 0
    with torch.no_grad():
        for key, value in tensors.items():
            if key.endswith(f".{FACTOR_B}"):
                continue
            if key.endswith(f".{FACTOR_A}"):
                name = key.removesuffix(f".{FACTOR_A}")
                delta = tensors[f"{name}.{FACTOR_B}"].float() @ value.float()
                target = _param(params, name, delta.shape)
                target.add_(delta.to(target.dtype))
            else:
                target = _param(params, key, value.shape)
                target.copy_(value.to(target.dtype))
            changed += 1
    return changed


def _param(params: dict[str, torch.nn.Parameter], name: str, shape: torch.Size) -> torch.Tensor:
    if name not in params:
        raise ValueError(f"the adapter changes {name!r}, which the base model does not have")
    if params[name].shape != shape:
        raise ValueError(
            f"adapter tensor for {name!r} has shape {tuple(shape)}, "
            f"the base parameter {tuple(params[name].shape)}"
        )
    return params[name].data


def weight_file(directory: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"no model weights ({', '.join(_WEIGHT_FILES)}) in {directory}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def revision_of(files: list[Path]) -> str:
    """Short content hash of weight files in order: equal bytes, equal revision."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()[:_REVISION_HEX]
