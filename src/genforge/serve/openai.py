"""The OpenAI-compatible completions API, a codec over the verbs that declare it (Verb.openai == "completions"): POST
/v1/completions, answered whole or streamed as server-sent events (`data: {chunk}` lines, then `data: [DONE]`), with
logprobs and echo, so that the `openai` package and tools built for such servers (lm-evaluation-harness) use a genforge
language model unchanged. Its fields are the verb's own (prompt, max_tokens, temperature, top_p, seed, stop, logprobs,
echo), checked by the verb's definition with its bounds and words; OpenAI's other fields are accepted at their neutral
values and refused otherwise. Generation runs on the inference thread a piece at a time, so that concurrent streams
take turns, a whole-request deadline (Limits.timeout_s) ends it, and a client that goes away stops it at once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from genforge.serve.runtime import Runtime
from genforge.tasks.verb import RequestError, Verb, validated_json

ROUTE = "completions"


class CompletionBody(BaseModel):
    """OpenAI's completion request. The fields genforge reads are checked by the verb; the others must be neutral."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=200)
    prompt: str | list[str] = ""
    max_tokens: int | None = 16
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    logprobs: int | None = None
    echo: bool = False
    stream: bool = False
    n: int = 1
    best_of: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None
    suffix: str | None = None
    user: str | None = Field(None, max_length=256)
    stream_options: dict | None = None


NEUTRAL = {"n": 1, "best_of": (None, 1), "presence_penalty": 0.0, "frequency_penalty": 0.0, "logit_bias": (None, {}),
           "suffix": (None, "")}


def verb_of(verbs: dict[str, Verb]) -> Verb:
    return next(v for v in verbs.values() if v.openai == ROUTE)


def decode(runtime: Runtime, body: CompletionBody) -> tuple[Verb, object, dict]:
    """The verb, the served model and its decoded inputs; a RequestError says what to change."""
    for key, neutral in NEUTRAL.items():
        value = getattr(body, key)
        if value not in (neutral if isinstance(neutral, tuple) else (neutral,)):
            raise RequestError(f"{key}: genforge does not support {key}={value!r}; leave it out")
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise RequestError(f"prompt: one prompt per request, got {len(prompt)}; send them one by one")
        prompt = prompt[0]
    verb = verb_of(runtime.verbs)
    model = runtime.model(body.model, verb)
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    values = {"prompt": prompt, "max_tokens": body.max_tokens if body.max_tokens is not None else 16, "stop": stop,
              "echo": body.echo, "logprobs": body.logprobs,
              **{k: getattr(body, k) for k in ("temperature", "top_p", "seed") if getattr(body, k) is not None}}
    inputs = verb.decode(model, None, verb.fields(values), runtime.limits)
    return verb, model, inputs


async def completions(request: Request):
    runtime: Runtime = request.app.state.runtime
    body = validated_json(CompletionBody, await request.body())
    verb, model, inputs = decode(runtime, body)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model.name}
    if body.stream:
        return StreamingResponse(_events(runtime, verb, model, inputs, head), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache"})
    parts = [part async for part in _pieces(runtime, verb, model, inputs)]
    _, finish, logprobs, usage = parts[-1]  # the last part ends the answer
    return {**head, "choices": [{"text": "".join(p[0] for p in parts), "index": 0, "logprobs": logprobs,
                                 "finish_reason": finish}], "usage": usage}


async def _events(runtime: Runtime, verb: Verb, model, inputs: dict, head: dict):
    async for piece, finish, logprobs, _ in _pieces(runtime, verb, model, inputs, stream=True):
        choice = {"text": piece, "index": 0, "logprobs": logprobs, "finish_reason": finish}
        yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
    yield "data: [DONE]\n\n"


async def _pieces(runtime: Runtime, verb: Verb, model, inputs: dict, stream: bool = False):
    """(text, finish_reason once ended, logprobs of the text's tokens, usage once ended), from the verb's stream, one
    piece at a time on the inference thread; a whole answer (stream=False) gets its logprobs once, at the end."""
    loop = asyncio.get_running_loop()
    thread = runtime.threads["inference"]
    deadline = loop.time() + runtime.limits.timeout_s
    streamed = await loop.run_in_executor(thread, verb.stream, model, inputs)
    counted, tokens = 0, runtime.metrics.tokens.labels(model.name)
    try:
        if streamed.echoed:
            yield streamed.echoed, None, streamed.logprobs(upto=0) if stream else None, None
        while True:
            piece = await loop.run_in_executor(thread, next, streamed.pieces, None)
            if piece is None:
                break
            tokens.inc(streamed.completion.tokens - counted)
            counted = streamed.completion.tokens
            yield piece, None, streamed.logprobs(piece) if stream else None, None
            if loop.time() > deadline:  # the whole request's time is up: what was generated is the answer
                streamed.cut("length")
                break
        yield "", streamed.finish_reason, None if stream else streamed.logprobs(), streamed.usage()
    finally:
        loop.run_in_executor(thread, streamed.close)  # after the piece in progress: the thread is free at once
