"""Shims that let recbole 1.2.1 run on today's numpy, torch, scipy and Python.

Each shim is guarded: it only acts when the library really lacks what recbole expects, so it is a
no-op on the old versions recbole was written for. ``apply()`` is idempotent and runs on
``import recbole_cllm4rec``.
"""
from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import scipy.sparse as sp
import torch


def patch_numpy_aliases() -> None:
    """numpy 2 removed aliases that recbole's Config (``np.float_``), its metrics (``np.float``, which
    only its Config defines: a model loaded from a checkpoint is evaluated without one) and ray.tune
    (``np.bool8``) use."""
    for alias, target in {
        "float_": np.float64,
        "float": np.float64,
        "complex_": np.complex128,
        "bool8": np.bool_,
        "unicode_": np.str_,
    }.items():
        if alias not in np.__dict__:
            setattr(np, alias, target)


def stub_ray_if_missing() -> None:
    """recbole.quick_start imports ``ray.tune`` at module level but only needs it for hyper-tuning.

    ray 2.6.3 does not exist for Python 3.12 (the GPU machines), so provide an empty stand-in that
    fails loudly only if hyper-tuning is actually used.
    """
    if "ray" in sys.modules or importlib.util.find_spec("ray") is not None:
        return

    def _missing(*_args, **_kwargs):
        raise ImportError("ray is not installed: recbole's hyper-parameter tuning needs `pip install ray`")

    ray = types.ModuleType("ray")
    tune = types.ModuleType("ray.tune")
    tune.report = _missing
    ray.tune = tune
    sys.modules["ray"] = ray
    sys.modules["ray.tune"] = tune


def patch_recbole_torch_load() -> None:
    """torch>=2.6 loads with ``weights_only=True``, which refuses recbole checkpoints (they pickle
    the Config object). Calls made from recbole's own code (its trainer, ``load_data_and_model``)
    get ``weights_only=False`` back; every other caller keeps torch's safe default.
    """
    import inspect

    if getattr(torch.load, "_recbole_trusted", False):
        return
    if "weights_only" not in inspect.signature(torch.load).parameters:
        return
    torch_load = torch.load

    def load(*args, **kwargs):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller == "recbole" or caller.startswith("recbole."):
            kwargs.setdefault("weights_only", False)
        return torch_load(*args, **kwargs)

    load._recbole_trusted = True
    torch.load = load


def stub_tensorboard_if_missing() -> None:
    """recbole.utils imports ``torch.utils.tensorboard.SummaryWriter``, which needs the tensorboard
    package; the GPU images lack it. Without it, RecBole's tensorboard logging becomes a no-op.
    """
    if "torch.utils.tensorboard" in sys.modules or importlib.util.find_spec("tensorboard") is not None:
        return

    class SummaryWriter:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __getattr__(self, name: str):
            return lambda *args, **kwargs: None

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = SummaryWriter
    sys.modules["torch.utils.tensorboard"] = module


def patch_dok_update() -> None:
    """scipy>=1.13 dropped ``dok_matrix._update``, which LightGCN, NGCF, GCMC, ... call to fill A."""
    if hasattr(sp.dok_matrix, "_update"):
        return

    def _update(self, data) -> None:
        self._dict.update(data)

    sp.dok_matrix._update = _update


def undo_sine_anomaly_detection() -> None:
    """recbole's ``sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
    at import, and ``get_model`` imports it (for any built-in model name), so every later backward in
    the process (baselines, and CLLM4Rec after a baseline) ran with anomaly checks: slower (this
    project's tiny test runs took 4x as long) and with a stack trace kept per op. Import it now and
    switch anomaly detection back off.
    """
    if torch.is_anomaly_enabled():
        return  # the user asked for it
    import recbole.model.sequential_recommender.sine  # noqa: F401

    torch.autograd.set_detect_anomaly(False)


def apply() -> None:
    """Apply every shim (order matters: numpy, ray and tensorboard before recbole is first imported)."""
    patch_numpy_aliases()
    stub_ray_if_missing()
    stub_tensorboard_if_missing()
    patch_dok_update()
    patch_recbole_torch_load()
    undo_sine_anomaly_detection()
