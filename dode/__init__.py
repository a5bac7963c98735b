"""dode: Distilled-ODE solvers for diffusion models."""

__version__ = "0.1.0"
