"""genforge: train, evaluate, explain, compress and serve models of images, tables, time series and text on PyTorch."""

__version__ = "0.1.0"
