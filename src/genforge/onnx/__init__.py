"""ONNX: the parts a task exports (parts.py), and exporting, checking and running them in ONNX Runtime (export.py)."""
