"""One training run over a workdir: set-up (model, objective, sharding), the loop, orbax
checkpoints and resume, guards against NaN and blow-ups, the results report, the workdir lock,
and the config checks made before any long work.
"""
