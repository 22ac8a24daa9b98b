"""The plugin's yaml defaults, installed as ``recbole_cllm4rec/properties`` (see pyproject.toml)."""
