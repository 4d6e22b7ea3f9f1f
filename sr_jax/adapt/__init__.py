"""Cheap adaptation of a frozen base: LoRA as a transform of the parameter tree, its unmerged
branch and the cost model that chooses between the two, adapter export and banks, CoLoRA's
contribution-based ranks and the FAIG scores they come from.
"""
