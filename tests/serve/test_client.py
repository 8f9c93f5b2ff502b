"""genforge.client against a live `genforge serve` (token, one request in flight at a time so that a 503 can be
provoked): every method, a 503 retried, a 4xx raised with the server's message, a timeout. And against small local
servers that misbehave: a redirect to another origin never gets the token, and every failure (cut off, not JSON, not
HTTP, reset, silent) is one of the client's typed errors."""

import contextlib
import http.server
import socket
import struct
import threading

import httpx
import numpy as np
import pytest
from helpers import TOKEN, start_server, until

from genforge.client import Client, ClientError, RedirectRefused, RequestRejected, ServerError, Timeout, Unavailable
from genforge.data import load_dataset
from genforge.runs import load_run


@pytest.fixture(scope="module")
def server(classifier_run, gan_run, forecast_runs, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN)
    proc, url = start_server([classifier_run, gan_run, forecast_runs[0]], "--token-file", token_file,
                             "--max-concurrency", "1")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def images():
    return load_dataset("fashion-mnist", progress=False).test_x[:4].numpy()  # uint8 (4, 1, 28, 28)


def test_every_method(server, classifier_run, gan_run, images):
    client = Client(server, token=TOKEN)
    assert client.ready()
    cards = {c["name"]: c for c in client.models()}
    assert {c["task"] for c in cards.values()} == {"classify", "gan", "forecast"}
    clf = next(n for n, c in cards.items() if c["task"] == "classify")
    assert client.card(clf)["classes"] == cards[clf]["classes"]
    predictions = client.classify(images, top_k=2)  # the only classifier: no model= needed
    model = load_run(classifier_run).model
    expected = model.probabilities(model(__import__("torch").from_numpy(images))).argmax(1).tolist()
    assert [p["index"] for p in predictions] == expected and len(predictions[0]["top_k"]) == 2
    generated = client.generate(n=3, label=2, seed=5)
    assert generated.dtype == np.uint8 and generated.shape == (3, 1, 28, 28)
    assert np.array_equal(generated, load_run(gan_run, backend="onnxruntime").sample(3, label=2, seed=5).numpy())
    forecaster = next(n for n, c in cards.items() if c["task"] == "forecast")
    history = np.linspace(800, 1200, cards[forecaster]["forecast"]["minimum_history"])
    answer = client.forecast(history, horizon=3)
    assert len(answer["forecast"]) == 3 and answer["model"] == forecaster
    explained = client.explain(images[:1], method="integrated-gradients", steps=4)
    assert explained[0]["index"] == expected[0] and np.array(explained[0]["attributions"]).shape == (1, 28, 28)


def test_4xx_is_raised_with_the_servers_message(server, images):
    client = Client(server, token=TOKEN)
    with pytest.raises(RequestRejected) as e:
        client.classify(images[:, :, :20])  # 20 rows, not 28
    assert e.value.status == 422 and "each input must have 784 values" in e.value.message
    with pytest.raises(RequestRejected) as e:
        client.generate(n=2, model="nope")
    assert e.value.status == 404 and "no model named 'nope'" in e.value.message
    with pytest.raises(RequestRejected) as e:
        Client(server, token="wrong" * 4).models()
    assert e.value.status == 401 and "Bearer" in e.value.message
    with pytest.raises(RequestRejected, match="give model=NAME for reconstruct"):
        client._model("reconstruct", None)


def test_503_is_retried_with_backoff(server, images):
    """The server takes one request at a time (--max-concurrency 1): while explanations keep it busy, a classify
    request gets 503; the client retries it, and it is answered once they stop."""
    stop, auth = threading.Event(), {"authorization": f"Bearer {TOKEN}"}

    def busy():  # explanations back to back until told to stop
        client = Client(server, token=TOKEN, timeout=120, retries=0)
        while not stop.is_set():
            with contextlib.suppress(Unavailable):
                client.explain(np.repeat(images, 4, axis=0), method="integrated-gradients", steps=64)

    def in_flight() -> bool:
        return "genforge_in_flight 1.0" in httpx.get(f"{server}/metrics", headers=auth).text

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        until(in_flight, "an explanation in flight", 30)
        with pytest.raises(Unavailable) as e:  # without retries the 503 is raised, with the server's message
            Client(server, token=TOKEN, retries=0).classify(images)
        assert e.value.status == 503 and "concurrency limit" in e.value.message
        client = Client(server, token=TOKEN, retries=12, backoff=0.05)

        def stop_once_retrying():  # the explanations stop once the client has had a 503 and is retrying
            until(lambda: client.attempts > 1 or stop.is_set(), "the client retrying", 30)
            stop.set()

        threading.Thread(target=stop_once_retrying, daemon=True).start()
        assert len(client.classify(images)) == 4
        assert client.attempts > 1  # answered 503 at least once, then retried
    finally:
        stop.set()
        thread.join()
    metrics = httpx.get(f"{server}/metrics", headers=auth).text
    assert 'genforge_requests_total{route="classify",status="503"}' in metrics


def test_timeout_and_no_server(server, images):
    client = Client(server, token=TOKEN, timeout=0.05)
    with pytest.raises(Timeout, match="within 0.05 s"):
        client.explain(np.repeat(images, 4, axis=0), method="integrated-gradients", steps=64)
    assert len(Client(server, token=TOKEN, retries=12).classify(images)) == 4  # served once the slot frees
    with pytest.raises(Unavailable, match="cannot reach"):
        Client("http://127.0.0.1:9", retries=0).models()


# --- small local servers that misbehave -------------------------------------------------------------------------


@pytest.fixture
def http_server():
    """start(answer, host) -> (base URL, the headers of each request it got): an HTTP server on a free port whose
    handler is answer(handler)."""
    started = []

    def start(answer, host="127.0.0.1"):
        seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append({k.lower(): v for k, v in self.headers.items()})
                self.rfile.read(int(self.headers.get("content-length") or 0))
                answer(self)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # poll every 50 ms
        started.append(server)
        return f"http://{host}:{server.server_port}", seen

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def json_answer(handler, body=b'{"models": [], "predictions": []}'):
    handler.send_response(200)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def redirect(location: str, code: int):
    def answer(handler):
        handler.send_response(code)
        handler.send_header("location", location + handler.path)
        handler.send_header("content-length", "0")
        handler.end_headers()
    return answer


VERBS = {"GET": lambda c: c.models(), "POST": lambda c: c.classify([[0.0, 1.0]], model="m")}


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("other", ["another port", "another host name"])
def test_a_redirect_to_another_origin_is_refused_and_the_token_stays_home(http_server, code, method, other):
    """An origin is scheme, host and port (RFC 6454): localhost is another origin than 127.0.0.1 even where it
    reaches the same machine, so the second server is reached either by another port or by another name."""
    second, seen_there = http_server(json_answer)
    target = second if other == "another port" else second.replace("127.0.0.1", "localhost")
    first, seen_here = http_server(redirect(target, code))
    with pytest.raises(RedirectRefused) as e:
        VERBS[method](Client(first, token=TOKEN, retries=0))
    assert e.value.status == code and target in e.value.message and "token" in e.value.message
    assert seen_here[0]["authorization"] == f"Bearer {TOKEN}"  # the origin it was given for
    assert seen_there == []  # never asked, so never sent the token


def test_a_redirect_within_the_origin_is_followed_with_the_token(http_server):
    def answer(handler):
        if handler.path == "/v1/models":
            handler.send_response(302)
            handler.send_header("location", "/v1/moved")
            handler.send_header("content-length", "0")
            handler.end_headers()
        else:
            json_answer(handler)

    url, seen = http_server(answer)
    assert Client(url, token=TOKEN).models() == []
    assert [h.get("authorization") for h in seen] == [f"Bearer {TOKEN}"] * 2


@pytest.fixture
def raw_server():
    """start(behave) -> base URL of a TCP listener that reads each request's head and then calls behave(conn):
    for the answers an HTTP server would not send."""
    listeners, held, done = [], [], threading.Event()

    def start(behave):
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve():
            while not done.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:  # closed at the end of the test
                    return
                held.append(conn)
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                    head += chunk
                behave(conn)

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield start
    done.set()
    for s in listeners + held:
        s.close()


def cut_off(status: str, body: bytes, length: int):
    def behave(conn):
        conn.sendall(f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n"
                     f"connection: close\r\n\r\n".encode() + body)
        conn.close()
    return behave


def answered(body: bytes):
    return cut_off("200 OK", body, len(body))


def reset(conn):  # SO_LINGER with a zero timeout: close sends RST, not FIN
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def head_only(conn):  # the head of an answer, and then nothing
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n")


FAILURES = {  # name: (what the server does, the error, words of its message)
    "cut off": (cut_off("200 OK", b'{"models": [', 100), Unavailable, "cut off after 12 bytes of 100"),
    "an error cut off": (cut_off("500 Internal Server Error", b'{"err', 100), ServerError, "Internal Server Error"),
    "not JSON": (answered(b"<html>a proxy's login page</html>"), ServerError, "not JSON: \"<html>a proxy's"),
    "not UTF-8": (answered(b"\xff\xfe\xfa\xfb"), ServerError, "not JSON"),
    "JSON of another API": (answered(b"[1, 2]"), ServerError, "has no 'models'"),
    "not HTTP": (lambda conn: conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n"), Unavailable, "the connection to"),
    "closed without an answer": (lambda conn: conn.close(), Unavailable, "the connection to"),
    "reset": (reset, Unavailable, "the connection to"),
    "no answer": (lambda conn: None, Timeout, "within 0.5 s"),
    "a head and no body": (head_only, Timeout, "within 0.5 s"),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_every_failure_is_one_of_the_clients_errors(raw_server, failure):
    behave, error, words = FAILURES[failure]
    client = Client(raw_server(behave), token=TOKEN, timeout=0.5, retries=0)
    with pytest.raises(ClientError) as e:
        client.models()
    assert isinstance(e.value, error) and words in e.value.message, repr(e.value)


def test_no_server_and_a_url_that_is_not_http_are_typed_errors():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(Unavailable, match="cannot reach"):
        Client(f"http://127.0.0.1:{port}", retries=0).models()
    for url in ("127.0.0.1:8000", "ftp://127.0.0.1", "http://127.0.0.1:port"):
        with pytest.raises(RequestRejected, match="give the server's http:// or https:// URL"):
            Client(url)
