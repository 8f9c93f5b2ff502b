"""genforge: train, evaluate, explain, compress and serve models of images, tables and time series on PyTorch."""

__version__ = "0.1.0"
