"""Each compatibility shim does its job, and only its job."""
import importlib.util
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_cllm4rec import compat


def test_numpy_aliases_point_at_the_numpy2_types():
    assert np.float_ is np.float64 and np.bool8 is np.bool_ and np.complex_ is np.complex128


def test_recbole_ndcg_computes_without_a_recbole_config(monkeypatch):
    """A model loaded from a checkpoint is evaluated without RecBole's Config, which alone defined np.float."""
    from recbole.evaluator.metrics import NDCG

    monkeypatch.delattr(np, "float", raising=False)  # as before any Config was built in this process
    compat.patch_numpy_aliases()
    ndcg = NDCG.metric_info(None, np.array([[True, False]]), np.array([1]))  # the hit at rank 1: 1, then 1
    assert ndcg.tolist() == [[1.0, 1.0]]


def test_recbole_config_and_ray_tune_import():
    import recbole.config  # noqa: F401  (uses np.float_ at import)
    import recbole.quick_start  # noqa: F401  (imports ray.tune, which uses np.bool8)


def test_dok_update_fills_the_matrix_as_lightgcn_does():
    a = sp.dok_matrix((3, 3), dtype=np.float32)
    a._update({(0, 1): 2.0, (2, 0): 1.0})
    assert a[0, 1] == 2.0 and a[2, 0] == 1.0 and a.nnz == 2


def test_ray_stub_when_ray_is_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "ray", raising=False)
    monkeypatch.delitem(sys.modules, "ray.tune", raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    compat.stub_ray_if_missing()
    assert "ray" in sys.modules
    with pytest.raises(ImportError, match="pip install ray"):
        sys.modules["ray"].tune.report(score=1)


class Pickled:
    """Stands for recbole's Config inside a checkpoint: not loadable with weights_only=True."""

    value = 3


def test_torch_load_trusts_only_recbole_callers(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"config": Pickled()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        torch.load(path)  # this module is not recbole: torch's safe default stays
    namespace = {"__name__": "recbole.trainer.fake", "torch": torch, "path": path}
    exec("result = torch.load(path)", namespace)
    assert namespace["result"]["config"].value == 3


def test_apply_is_idempotent():
    load = torch.load
    compat.apply()
    assert torch.load is load


def test_tensorboard_stub_when_tensorboard_is_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real_find_spec(name, *a)
    )
    compat.stub_tensorboard_if_missing()
    writer = sys.modules["torch.utils.tensorboard"].SummaryWriter("log_tensorboard/x")
    assert writer.add_scalar("loss", 1.0, 0) is None and writer.add_hparams({}, {}) is None


def test_recbole_models_leave_anomaly_detection_off():
    from recbole.utils import get_model

    for name in ("EASE", "SINE", "LightGCN"):
        get_model(name)
        assert not torch.is_anomaly_enabled(), name  # sine.py's import-time switch stays undone
