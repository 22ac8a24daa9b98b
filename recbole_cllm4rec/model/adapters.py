"""What CLLM4Rec does to the backbone it loads: fewer layers, LoRA adapters, dropout, its precision and
its fingerprint. Everything else about the backbone (loading, the random-weight rebuild) is in
``recbole_cllm4rec.backbone``."""
from __future__ import annotations

import copy
import hashlib

import torch
from torch import nn


def backbone_fingerprint(backbone: nn.Module, how_read: str = "") -> torch.Tensor:
    """A BLAKE2b digest of the backbone's weights (names, shapes, bytes), and of ``how_read`` when
    given (which depth each side reads), as a uint8 tensor."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(how_read.encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8).clone()


def block_list_name(backbone: nn.Module) -> str:
    """The attribute of the backbone's base model that holds its transformer blocks."""
    name = next((n for n in ("layers", "h") if isinstance(getattr(backbone.base_model, n, None), nn.ModuleList)), None)
    if name is None:
        raise ValueError(f"cannot find the transformer blocks of {type(backbone.base_model).__name__}")
    return name


def truncate_layers(backbone: nn.Module, n_layers: int) -> None:
    """Keep at most the first ``n_layers`` transformer blocks (then the final norm): a cheaper backbone.

    A backbone with no more than ``n_layers`` blocks is kept whole. The fingerprint is taken
    afterwards, so checkpoints record how many layers they were trained with.
    """
    name = block_list_name(backbone)
    layers = getattr(backbone.base_model, name)
    if n_layers < 1:
        raise ValueError(f"llm_layers={n_layers}: keep at least one layer (~ keeps all {len(layers)})")
    if n_layers >= len(layers):
        return
    setattr(backbone.base_model, name, layers[:n_layers])
    backbone.config.num_hidden_layers = n_layers
    if getattr(backbone.config, "layer_types", None):
        backbone.config.layer_types = backbone.config.layer_types[:n_layers]


def layer_view(backbone: nn.Module, n_layers: int | None) -> nn.Module:
    """The backbone's base model reading only its first ``n_layers`` blocks (then the final norm).

    A view, not a copy: it shares every block, weight and buffer with the backbone (and so its LoRA
    adapters, device and dtype), so one loaded backbone serves a shallow pass and a deep one. The
    base model itself when ``n_layers`` is ``None`` or at least its depth.
    """
    base, name = backbone.base_model, block_list_name(backbone)
    layers = getattr(base, name)
    if n_layers is None or n_layers >= len(layers):
        return base
    view = copy.copy(base)
    view._modules = {**base._modules, name: layers[:n_layers]}  # its own block list, the same blocks
    view.config = copy.copy(base.config)
    view.config.num_hidden_layers = n_layers
    if getattr(view.config, "layer_types", None):
        view.config.layer_types = view.config.layer_types[:n_layers]
    return view


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def set_dropout(backbone: nn.Module, p: float) -> None:
    """Set every dropout probability inside the backbone to ``p`` (``nn.Dropout`` modules and the
    attention-probability dropout of LLaMA-style attention, which is a float attribute)."""
    for module in backbone.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p


def add_lora(backbone: nn.Module, rank: int, alpha: float, targets: list[str], seed: int) -> None:
    """LoRA adapters (``peft``) on the ``targets`` linear layers of the frozen backbone, in place.

    The only backbone weights that train; the pretrained ones stay frozen and out of checkpoints.
    The adapters' random halves are drawn from ``seed`` (the other halves start at zero, so the
    backbone starts unchanged).
    """
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:
        raise ImportError("lora_rank needs peft: pip install peft (or the [lora] extra)") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0), backbone)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_("lora_" in name)


def autocast_dtype(llm_dtype: str, device) -> torch.dtype | None:
    """The backbone's autocast dtype; ``None`` runs it in fp32.

    ``auto`` picks bf16 where the hardware computes it natively (CUDA; CPUs with avx512_bf16 or
    AMX), fp32 elsewhere. The ID tables, heads and losses always stay fp32.
    """
    if llm_dtype == "auto":
        native = torch.device(device).type == "cuda" or cpu_has_native_bf16()
        return torch.bfloat16 if native else None
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[llm_dtype]
