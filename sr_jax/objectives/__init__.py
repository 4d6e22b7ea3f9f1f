"""Training objectives: each supplies a loss/update for the shared step builder."""
