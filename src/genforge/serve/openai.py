"""The OpenAI-compatible completions API, a codec over the verbs that declare it (Verb.openai == "completions"): POST
/v1/completions, answered whole or streamed as server-sent events (`data: {chunk}` lines, then `data: [DONE]`), with
logprobs and echo, so that the `openai` package and tools built for such servers (lm-evaluation-harness) use a genforge
language model unchanged. Its fields are the verb's own (prompt, max_tokens, temperature, top_p, seed, stop, logprobs,
echo), with the verb's bounds and words; OpenAI's other fields are accepted at their neutral values only (the route's
schema says so). Generation runs on the inference thread a piece at a time, so that concurrent streams
take turns, a whole-request deadline (Limits.timeout_s) ends it, and a client that goes away stops it at once."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import time
import uuid
from typing import Annotated, Literal

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from genforge.serve.runtime import Runtime
from genforge.tasks.verb import Verb, validated_json

ROUTE = "completions"


FROM_VERB = ("max_tokens", "temperature", "top_p", "seed", "logprobs", "echo")  # OpenAI's names, the verb's bounds
Nothing = Annotated[float, Field(ge=0, le=0)]  # OpenAI's penalties: only their neutral value


class OpenAIFields(BaseModel):
    """OpenAI's completion fields that are not the verb's: the model, the prompt and stop in OpenAI's forms, streaming,
    and the options genforge takes only at their neutral values (the schema says which)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=200, description="A served language model's name (GET /v1/models)")
    stop: str | list[str] | None = Field(None, max_length=4, description="Up to 4 strings that end the text")
    stream: bool = Field(False, description="Server-sent events: data: {chunk} lines, then data: [DONE]")
    stream_options: dict | None = None
    n: Literal[1] = 1
    best_of: Literal[1] | None = None
    presence_penalty: Nothing = 0.0
    frequency_penalty: Nothing = 0.0
    logit_bias: dict[str, float] | None = Field(None, max_length=0)
    suffix: str | None = Field(None, max_length=0)
    user: str | None = Field(None, max_length=256)


@functools.cache
def body_model(verb: Verb) -> type[BaseModel]:
    """OpenAI's completion request over `verb`: its prompt (a text, or a list of one), the fields OpenAI and the verb
    share with the verb's own bounds (max_tokens defaulting to OpenAI's 16), and OpenAIFields."""
    own = verb.request.model_fields
    prompt = own["prompt"]
    fields = {"prompt": (str | Annotated[list[str], Field(min_length=1, max_length=1)],
                         Field(prompt.default, description=prompt.description))}
    for name in FROM_VERB:
        field = copy.copy(own[name])
        if name == "max_tokens":
            field.default = 16
        fields[name] = (own[name].annotation, field)
    return create_model("CompletionBody", __base__=OpenAIFields, **fields)


def body_schema(verb: Verb) -> dict:
    """The route's openapi_extra: its JSON body."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": body_model(verb).model_json_schema()}}}}


def verb_of(verbs: dict[str, Verb]) -> Verb:
    return next(v for v in verbs.values() if v.openai == ROUTE)


def decode(runtime: Runtime, verb: Verb, body) -> tuple[object, dict]:
    """The served model and the verb's decoded inputs; a RequestError says what to change."""
    model = runtime.model(body.model, verb)
    prompt = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
    values = {"prompt": prompt, "stop": stop, **{k: getattr(body, k) for k in FROM_VERB}}
    return model, verb.decode(model, None, verb.fields(values), runtime.limits)


async def completions(request: Request):
    runtime: Runtime = request.app.state.runtime
    verb = verb_of(runtime.verbs)
    body = validated_json(body_model(verb), await request.body())
    model, inputs = decode(runtime, verb, body)
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
