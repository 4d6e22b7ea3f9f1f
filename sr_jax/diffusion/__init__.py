"""Diffusion math: SR3 noise schedules and samplers (DDPM, DDIM, DPM-Solver++(2M)), ResShift."""
