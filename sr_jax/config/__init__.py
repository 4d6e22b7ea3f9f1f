"""Job configs: the shared defaults every job starts from (`config_base`), loading a config
file with its variants (`config_files`), the documented keys (`config_doc`) and the command
line (`config_cli`). The rules that check a config against a model are in `sr_jax.train`.
"""
