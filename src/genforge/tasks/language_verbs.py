"""A language model's verb, complete (a prompt's continuation, as the text generation APIs answer it), and a text
classifier's explain (which characters its answer rests on)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from genforge.data.tokens import tokenizer_of
from genforge.language.attribution import STEPS, explain_texts
from genforge.language.generation import TextStream, complete, prompt_ids
from genforge.language.scoring import token_logprobs
from genforge.tasks.classify import EXPLAIN, ClassTarget, NotExplainable, target_index
from genforge.tasks.verb import Integer, IntegerOrNone, Limits, RequestError, Strict, Verb

MAX_EXPLAIN_STEPS = 256  # integrated gradients' path points per text, before the server's max_explain_steps


class CompleteRequest(Strict):
    prompt: str = Field("", max_length=100_000, description="The text to continue; empty: a new entry")
    max_tokens: Integer = Field(64, ge=0, le=4096, description="Tokens to generate at most (0: none, e.g. to score "
                                "an echoed prompt)")
    temperature: float = Field(1.0, ge=0, le=10, description="Sampling temperature; 0 picks the likeliest token")
    top_k: IntegerOrNone = Field(None, ge=1, le=1_000_000, description="Sample among the k likeliest tokens")
    top_p: float | None = Field(None, gt=0, le=1, description="Sample among the fewest tokens whose probabilities "
                                "reach p (nucleus sampling)")
    seed: Integer = Field(0, ge=0, le=2**31 - 1, description="The same seed gives the same text")
    stop: list[str] = Field(default_factory=list, max_length=4, description="Up to 4 strings that end the text "
                            "(not included); the end of an entry always does")
    logprobs: IntegerOrNone = Field(None, ge=0, le=5, description="Also answer each token's log-probability and "
                                    "those of this many likeliest alternatives")
    echo: bool = Field(False, description="Answer the prompt before the continuation (with logprobs: its tokens' "
                       "log-probabilities too, e.g. to score a text)")


class Complete(Verb):
    command = "generate"
    summary = "Continues a prompt with a language model: the text, its token count and why it ended"
    request = CompleteRequest
    openai = "completions"  # also POST /v1/completions, OpenAI's shape (serve/openai.py)
    fewer = "tokens (max_tokens)"

    def offered(self, served) -> bool:
        return not served.run.meta.get("classes")

    def refusal(self, served) -> str | None:
        return "a text classifier does not generate text" if served.run.meta.get("classes") else None

    def decode(self, served, array, fields: dict, limits: Limits) -> dict:
        if len(fields["prompt"]) > limits.max_prompt_chars:
            raise RequestError(f"prompt: at most {limits.max_prompt_chars:,} characters, got "
                               f"{len(fields['prompt']):,}")
        if fields["max_tokens"] > limits.max_tokens:
            raise RequestError(f"max_tokens must be at most {limits.max_tokens}")
        return fields

    def stream(self, served, inputs: dict) -> TextStream:
        tokenizer, alternatives = tokenizer_of(served.run.meta), inputs["logprobs"]
        completion = complete(served.model, tokenizer, inputs["prompt"], inputs["max_tokens"], inputs["temperature"],
                              inputs["top_k"], inputs["top_p"], inputs["seed"], inputs["stop"], alternatives)
        trace = []
        if inputs["echo"] and alternatives is not None:
            trace = token_logprobs(served.model, prompt_ids(tokenizer, inputs["prompt"]), alternatives)
        return TextStream(completion, tokenizer, inputs["prompt"], inputs["echo"], alternatives, trace)

    def run(self, served, inputs: dict) -> dict:
        streamed = self.stream(served, inputs)
        for _ in streamed.pieces:
            pass
        return {"text": streamed.text, "tokens": streamed.completion.tokens,
                "prompt_tokens": streamed.completion.prompt_tokens, "finish_reason": streamed.finish_reason,
                "logprobs": streamed.logprobs()}

    def answer(self, served, inputs: dict, result: dict, latency_ms: float) -> dict:
        return {"model": served.name, "backend": served.backend, "latency_ms": latency_ms, **result}

    def tensors(self, served) -> dict:
        one = "a tensor of shape [1]"
        return {"inputs": [
            {"name": "prompt", "datatype": "BYTES", "shape": [1], "description": "UTF-8 text to continue; default: "
             "none (a new entry)", "optional": True},
            {"name": "max_tokens", "datatype": "INT64", "shape": [1], "description": f"{one}; default 64",
             "optional": True},
            {"name": "temperature", "datatype": "FP32", "shape": [1], "description": f"{one}; default 1",
             "optional": True},
            {"name": "seed", "datatype": "INT64", "shape": [1], "description": f"{one}; default 0", "optional": True}],
            "outputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "description": "the continuation"}]}

    def from_tensors(self, served, tensors: dict, parameters: dict) -> tuple[None, dict]:
        values = {k: tensors[k] for k in ("prompt", "max_tokens", "temperature", "seed") if k in tensors}
        for key in ("top_k", "top_p", "stop"):
            if key in parameters:
                values[key] = parameters[key]
        return None, values

    def outputs(self, served, inputs: dict, result: dict) -> dict:
        return {"text": np.array([result["text"].encode()], dtype=object)}


COMPLETE = Complete("complete")


class ExplainTextRequest(ClassTarget):
    inputs: list[str] = Field(min_length=1, max_length=256, description="Texts to explain; at most the server's "
                              f"max_explain_batch ({Limits.max_explain_batch} by default)")
    steps: IntegerOrNone = Field(None, ge=1, le=MAX_EXPLAIN_STEPS, description="Integrated gradients' path points "
                                 f"per text; at most the server's max_explain_steps ({Limits.max_explain_steps} by "
                                 f"default); default {STEPS}")


class ExplainText(Verb):
    """A text classifier's explain, at the route of the image classifiers' (the same name, its own inputs)."""

    summary = EXPLAIN.summary
    description = """A text classifier's texts (strings) instead of images: for each, the predicted class with its
probability, and each character's integrated gradients on the embeddings (towards the `target` class, default the
predicted one; they add up to log p(class | text) - log p(class | the end token everywhere), `delta` is the gap) and
its attention rollout (its share of the attention that reaches the pooled positions). On a thread of its own, one
explanation at a time per model, with the run's PyTorch weights (an ONNX-only run gets a 409)."""
    request, thread, fewer, answer_field, conflict = ExplainTextRequest, "gradients", "texts or steps", \
        "explanations", EXPLAIN.conflict

    def offered(self, served) -> bool:
        return served.explain_refusal is None

    def refusal(self, served) -> str | None:
        return served.explain_refusal

    def decode(self, served, array, fields: dict, limits: Limits) -> dict:
        texts, steps = fields["inputs"], fields["steps"]
        if len(texts) > limits.max_explain_batch:
            raise RequestError(f"at most {limits.max_explain_batch} texts per explain request, got {len(texts)}; send "
                               f"the others in further requests")
        if steps is not None and steps > limits.max_explain_steps:
            raise RequestError(f"steps must be at most {limits.max_explain_steps} on this server, got {steps}")
        too_long = next((i for i, t in enumerate(texts) if len(t) > limits.max_prompt_chars), None)
        if too_long is not None:
            raise RequestError(f"inputs[{too_long}]: at most {limits.max_prompt_chars:,} characters, got "
                               f"{len(texts[too_long]):,}")
        return {"texts": texts, "target": target_index(served, fields["target"]), "steps": steps or STEPS}

    def run(self, served, inputs: dict):
        tokenizer = tokenizer_of(served.run.meta)
        try:
            return served.with_gradients(
                lambda model: explain_texts(model, tokenizer, inputs["texts"], inputs["target"], inputs["steps"]))
        except NotExplainable as e:
            raise RequestError(str(e), 409) from None

    def answer(self, served, inputs: dict, result, latency_ms: float) -> dict:
        classes = served.classes
        return {"model": served.name, "backend": "torch", "latency_ms": latency_ms, "method": "integrated-gradients",
                "steps": inputs["steps"], "explanations": [
                    {"index": e.predicted, "label": classes[e.predicted], "probability": e.predicted_probability,
                     "target": {"index": e.target, "label": classes[e.target], "probability": e.target_probability},
                     "characters": e.characters, "attributions": e.attributions, "rollout": e.rollout,
                     "delta": e.delta} for e in result]}


EXPLAIN_TEXT = ExplainText("explain")
