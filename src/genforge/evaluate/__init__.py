from genforge.evaluate.classification import evaluate, measure_speed

__all__ = ["evaluate", "measure_speed"]
