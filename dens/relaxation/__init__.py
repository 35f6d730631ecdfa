"""IS2RE by relaxation: a batched L-BFGS (lbfgs), the batch driver with systems leaving and
entering (driver), and the relax job of a trained run (is2re)."""
