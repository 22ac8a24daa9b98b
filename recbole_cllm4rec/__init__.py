"""CLLM4Rec (Zhu et al., WWW 2024) as a RecBole plugin.

Importing the package applies the compatibility shims (RecBole 1.2.1 does not import under numpy 2
without them) and registers the ``PaperRecall`` and ``PaperScore`` metrics; nothing else in RecBole
changes. CLLM4Rec runs through the plugin's entry points: ``run_recbole.py``, ``run_hyper.py``,
``recbole_cllm4rec.quick_start.run_model`` / ``run``, ``recbole_cllm4rec.registry.Config`` and
``get_model`` / ``get_trainer``, ``python -m recbole_cllm4rec.recommend``.
"""
from recbole_cllm4rec import compat

compat.apply()

from recbole_cllm4rec import registry  # noqa: E402  (recbole must be imported after the shims)

registry.register()

__version__ = "0.1.0"
__all__ = ["registry", "compat", "__version__"]
