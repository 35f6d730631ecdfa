"""Datasets: generation (mini-MD17), conversion (MD17 npz) and aselmdb reading for training."""
