"""bnnbench: train, compare and deploy binary neural networks."""

__version__ = "0.1.0"
