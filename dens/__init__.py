"""dens: DeNS (Denoising Non-Equilibrium Structures) reproduction library."""
