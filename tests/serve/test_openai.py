"""The OpenAI-compatible completions API, driven by the official `openai` package against `genforge serve` of a small
language model (conftest's text_run): the same text as /v1 and the library for the same seed, whole or streamed,
logprobs and echo as lm-evaluation-harness reads them, the verb's own bounds and words, and a client that leaves a
stream stops the generation at once."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from helpers import start_server

from genforge.data.tokens import ByteTokenizer
from genforge.language.generation import prompt_ids
from genforge.language.scoring import token_losses
from genforge.runs import load_run


@pytest.fixture(scope="module")
def server(text_run):
    proc, url = start_server([text_run])
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def name(server):
    return httpx.get(f"{server}/v1/models").json()["models"][0]["name"]  # genforge's own list: the cards


def test_the_model_list_answers_openai_and_genforge_alike(client, name):
    assert [m.id for m in client.models.list()] == [name] == ["text-gpt"]


def test_a_completion_is_the_text_v1_and_the_library_give_for_the_same_seed(client, server, name, text_run):
    answer = client.completions.create(model=name, prompt="The ", max_tokens=30, temperature=0.9, seed=4)
    choice = answer.choices[0]
    v1 = httpx.post(f"{server}/v1/models/{name}/complete",
                    json={"prompt": "The ", "max_tokens": 30, "temperature": 0.9, "seed": 4}).json()
    assert choice.text == v1["text"] == load_run(text_run).generate("The ", 30, 0.9, seed=4).text()
    assert choice.finish_reason == v1["finish_reason"] in ("stop", "length")
    assert answer.usage.prompt_tokens == 4 and answer.usage.completion_tokens == v1["tokens"]
    assert answer.object == "text_completion" and answer.model == name


def test_a_stream_is_the_same_text_in_pieces(client, name):
    whole = client.completions.create(model=name, prompt="A ", max_tokens=40, temperature=1.0, seed=9).choices[0]
    chunks = list(client.completions.create(model=name, prompt="A ", max_tokens=40, temperature=1.0, seed=9,
                                            stream=True))
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == whole.text
    assert [c.choices[0].finish_reason for c in chunks][-1] == whole.finish_reason
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_echo_with_logprobs_scores_a_text_as_the_library_does(client, name, text_run):
    text = "Love is blind."
    answer = client.completions.create(model=name, prompt=text, max_tokens=0, echo=True, logprobs=1)
    choice = answer.choices[0]
    assert choice.text == text
    lp = choice.logprobs
    assert "".join(lp.tokens) == text and lp.text_offset == list(range(len(text)))
    model = load_run(text_run).model
    nats, n = token_losses(model, prompt_ids(ByteTokenizer(), text))
    assert n == len(lp.token_logprobs) == len(text)
    assert -sum(lp.token_logprobs) == pytest.approx(nats, rel=1e-4)
    assert all(len(top) == 1 for top in lp.top_logprobs)


def test_sampled_tokens_carry_their_logprobs_and_alternatives(client, name):
    answer = client.completions.create(model=name, prompt="The ", max_tokens=12, seed=1, logprobs=3, stop=["\n"])
    choice = answer.choices[0]
    lp = choice.logprobs
    if choice.finish_reason == "length":  # (a stop string's tokens are not part of the text)
        assert len(lp.tokens) == answer.usage.completion_tokens
    assert all(v <= 0 for v in lp.token_logprobs) and all(len(top) == 3 for top in lp.top_logprobs)
    streamed = client.completions.create(model=name, prompt="The ", max_tokens=12, seed=1, logprobs=3, stop=["\n"],
                                         stream=True)
    tokens = [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens


@pytest.mark.parametrize("kwargs, status, words", [
    ({"temperature": 11}, 422, "temperature: Input should be less than or equal to 10"),
    ({"logprobs": 6}, 422, "logprobs: Input should be less than or equal to 5"),
    ({"n": 2}, 422, "n: Input should be 1"),
    ({"prompt": ["a", "b"]}, 422, "prompt"),
    ({"model": "nope"}, 404, "no model named 'nope'"),
])
def test_a_bad_request_is_a_4xx_that_says_what_to_change(client, server, name, kwargs, status, words):
    request = {"model": name, "prompt": "x", "max_tokens": 5, **kwargs}
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(**request)
    assert e.value.status_code == status and words in str(e.value.message)
    if "temperature" in kwargs:  # the verb's own words, as /v1 says them
        v1 = httpx.post(f"{server}/v1/models/{name}/complete", json={"prompt": "x", "temperature": 11}).json()
        assert v1["error"]["message"] == words


def _generated(server: str, name: str) -> float:
    text = httpx.get(f"{server}/metrics").text
    found = re.search(rf'genforge_generated_tokens_total{{model="{re.escape(name)}"}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_a_client_that_leaves_a_stream_stops_the_generation(server, name):
    body = {"model": name, "prompt": "The ", "max_tokens": 4096, "temperature": 0}
    whole = httpx.post(f"{server}/v1/completions", json=body, timeout=60).json()["choices"][0]
    assert whole["finish_reason"] == "length"  # left alone, this generation runs all 4,096 tokens
    before = _generated(server, name)
    with httpx.stream("POST", f"{server}/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: "):
                break  # one piece came: the generation is under way; leave
    time.sleep(1.0)
    stopped = _generated(server, name)
    time.sleep(1.0)
    assert stopped == _generated(server, name), "the server kept generating for a client that left"
    assert before < stopped < before + 4096
    # the inference thread is free: a new request is answered at once
    answer = httpx.post(f"{server}/v1/completions", json={"model": name, "prompt": "a", "max_tokens": 1}, timeout=10)
    assert answer.status_code == 200


def test_sixteen_concurrent_streams_all_finish(client, name):
    def one(seed):
        chunks = list(client.completions.create(model=name, prompt="The ", max_tokens=64, seed=seed, stream=True))
        return chunks[-1].choices[0].finish_reason

    with ThreadPoolExecutor(16) as pool:
        reasons = list(pool.map(one, range(16)))
    assert all(r in ("stop", "length") for r in reasons)
