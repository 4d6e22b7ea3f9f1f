"""Jobs: a plain training job (base stage, then the job's own stage) and the CoLoRA job (base,
FAIG, rank allocation, adapters), each a sequence of stages over one workdir.
"""
