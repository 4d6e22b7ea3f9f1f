"""SR3 diffusion math: noise schedules, continuous noise levels and jitted samplers."""
