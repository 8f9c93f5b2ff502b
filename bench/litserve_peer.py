"""The peer of bench/serve_load.py: LitServe serving a genforge classifier's ONNX export, as a LitServe user
would write it, so that the benchmark compares genforge's server with a real one on the same model and runtime.

    python bench/litserve_peer.py RUN [--port 8766] [--max-batch 64] [--batch-timeout 0.005] [--fast-queue]

POST /predict takes genforge's JSON body ({"inputs": [image, ...]}, pixels 0-255) and answers like genforge's
classify: every probability and the top k classes per input. GET /health is LitServe's own hello-world route.
The model runs in ONNX Runtime with genforge's classify options (one intra-op thread, no spinning, no
telemetry), on one worker: genforge has one inference thread. This file needs only numpy, onnxruntime and
litserve, not genforge.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import litserve as ls
import numpy as np
from fastapi import HTTPException


class OnnxClassifier(ls.LitAPI):
    """One request holds one or more images; a batch is every queued request's images concatenated."""

    def __init__(self, run: Path, top_k: int = 3, **kwargs):
        super().__init__(**kwargs)
        meta = json.loads((run / "meta.json").read_text())
        record = json.loads((run / "export" / "export.json").read_text())
        self.model_path = run / "export" / record["parts"]["model"]["file"]
        self.classes, self.shape = list(meta["classes"]), tuple(meta["input_shape"])
        self.top_k = min(top_k, len(self.classes))

    def setup(self, device):
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # else it looks hosts up every few seconds
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # genforge's classify setting: small batches, the cores serve HTTP
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.model_path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.session.run(None, {self.input: np.zeros((16, *self.shape), np.uint8)})  # warm up, as genforge does

    def decode_request(self, request):
        """{"inputs": [...]} -> (n, *shape) uint8, with genforge's checks: numbers, shape, finite, 0-255."""
        try:
            x = np.asarray(request["inputs"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise HTTPException(422, "inputs must be a list of equally shaped arrays of numbers") from None
        if x.ndim < 2 or x[0].size != int(np.prod(self.shape)):
            raise HTTPException(422, f"each input must have {int(np.prod(self.shape))} values")
        low, high = float(x.min()), float(x.max())
        if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
            raise HTTPException(422, "pixel values must be finite and lie in 0-255")
        return np.rint(x).astype(np.uint8).reshape(len(x), *self.shape)

    def batch(self, inputs):
        return np.concatenate(inputs), [len(x) for x in inputs]

    def predict(self, batch):
        x, counts = batch if isinstance(batch, tuple) else (batch, None)  # max_batch_size 1 does not batch
        logits = self.session.run(None, {self.input: x})[0].astype(np.float32)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        return (p, counts) if counts is not None else p

    def unbatch(self, output):
        p, counts = output
        return np.split(p, np.cumsum(counts)[:-1])

    def encode_response(self, output):
        predictions = []
        for p in output.tolist():
            top = sorted(range(len(p)), key=p.__getitem__, reverse=True)[: self.top_k]
            predictions.append({"index": top[0], "label": self.classes[top[0]], "probabilities": p,
                                "top_k": [{"index": c, "label": self.classes[c], "probability": p[c]} for c in top]})
        return {"predictions": predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a genforge classifier run with RUN/export/model.onnx")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--max-batch", type=int, default=64, help="LitAPI(max_batch_size=...)")
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="LitAPI(batch_timeout=...), seconds")
    parser.add_argument("--fast-queue", action="store_true",
                        help="LitServer(fast_queue=True): ZeroMQ between the HTTP server and the worker")
    args = parser.parse_args()
    api = OnnxClassifier(args.run, max_batch_size=args.max_batch, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=args.fast_queue)
    # LitServe's documented production settings: no per-request log lines, no client.py written into the cwd
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
