"""genforge: train, evaluate, compress and serve image models on PyTorch."""

__version__ = "0.1.0"
