"""CLLM4Rec (Zhu et al., WWW 2024) as a RecBole plugin.

Importing the package applies the compatibility shims and registers ``CLLM4Rec`` with RecBole, so
RecBole's own entry points (``run_recbole``, ``load_data_and_model``, the CLI) know the model.
"""
from recbole_cllm4rec import compat

compat.apply()

from recbole_cllm4rec import registry  # noqa: E402  (recbole must be imported after the shims)

registry.install()

__version__ = "0.1.0"
__all__ = ["registry", "compat", "__version__"]
