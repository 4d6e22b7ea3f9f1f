"""The adaptation study: is cheap adaptation as good as full fine-tuning, at a fair comparison?

`python -m sr_jax.study --config configs/colora_nafnet.py:study --workdir W` runs, for one base
and each task the base never saw (study.tasks), every arm (full fine-tuning, uniform LoRA,
CoLoRA at the same parameter budget) at its own learning rate, chosen on a validation split
carved from the training images, never on the reported images; then each arm at its chosen
rate for every seed on the test images; and a budget curve (study.curve_budgets) of the LoRA
arms. It writes W/study.md (mean +- std over seeds of PSNR/SSIM per task and arm, trainable
share, adapter size, steps, chosen rates, the splits) and W/study.png (PSNR against trainable
share). Every run is an ordinary sr_jax run in its own directory, so an interrupted study
resumes where it stopped.

  splits.py   the fixed base / train / validation / test split of the images
  arms.py     each run's config: task, arm, budget, learning rate, seed, split
  select.py   the learning-rate choice on the validation split, and the runs behind it
  table.py    study.md and study.png
  __main__.py the command
"""
