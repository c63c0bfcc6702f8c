"""``python -m multimodal.serve`` against real clients: the ``openai`` package, ``curl -u :KEY``, httpx for raw SSE and
the bad-request corpus, and Debian's chromium driven by Playwright for the playground page.

One server for the module (a tiny random GPT export with the byte tokenizer via --gpt; the packaged DALL·E and CLIP
with no flags), started as a subprocess on a free loopback port."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image, ImageDraw

from multimodal.serve.engine import Event
from tests.serve_helpers import Server, free_port

KEY = "sk-test-0123456789"
CHROMIUM = "/usr/bin/chromium"
CONTEXT = 2048


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory) -> Path:
    from multimodal.checkpoint import save_export
    from multimodal.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=257, context_length=CONTEXT, tokenizer="byte", backbone={"width": 32, "layers": 2, "heads": 4}
        )
    )
    return save_export(model, tmp_path_factory.mktemp("serve") / "gpt")


@pytest.fixture(scope="module")
def gpt(gpt_dir):
    from multimodal.gpt.model import load_text_model

    return load_text_model(str(gpt_dir))


@pytest.fixture(scope="module")
def server(gpt_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    (root / "keys").write_text(f"# one key per line\n{KEY}\n")
    args = ["--gpt", str(gpt_dir), "--api-keys", str(root / "keys"), "--max-body-mb", "1", "--max-image-mb", "0.5"]
    srv = Server(args, root / "log").wait()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


AUTH = {"Authorization": f"Bearer {KEY}"}


def post(server, path: str, body, headers=AUTH, timeout: float = 60) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(server.url + path, content=content, headers=headers, timeout=timeout)


def engine_stats(server) -> dict:
    return httpx.get(server.url + "/health", timeout=5).json()["engines"]["gpt"]


def shape_png(color: str = "red") -> bytes:
    """A shapes-world-like picture: a coloured disc on black, 64×64."""
    im = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(im).ellipse([8, 8, 30, 30], fill=color)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


# -- completions -----------------------------------------------------------------------------------
# The service continues a prompt as given (OpenAI's and vLLM's convention, which lm-eval's API models expect), so it
# matches GPT.generate(..., document_start=False); the Python API and CLIs start the prompt as a document.
def test_completion_matches_the_python_api(client, gpt):
    greedy = client.completions.create(model="gpt", prompt="The cat", max_tokens=12, temperature=0)
    ref = gpt.generate("The cat", 12, temperature=0, document_start=False)
    assert greedy.object == "text_completion" and greedy.model == "gpt"
    assert greedy.choices[0].text == ref.text
    assert greedy.usage.prompt_tokens == 7 and greedy.usage.completion_tokens == len(ref.tokens)
    sampled = client.completions.create(
        model="gpt", prompt="The cat", max_tokens=12, temperature=0.9, top_p=0.95, seed=5
    )
    assert (
        sampled.choices[0].text
        == gpt.generate("The cat", 12, temperature=0.9, top_p=0.95, seed=5, document_start=False).text
    )
    # the issue's request: no model named, a stop string
    stop = ref.text[4:6] or "o"
    cut = client.completions.create(model="gpt", prompt="The cat", max_tokens=12, temperature=0, stop=[stop])
    assert cut.choices[0].text == gpt.generate("The cat", 12, temperature=0, stop=[stop], document_start=False).text
    assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].text


def test_list_prompts_and_n_choices_seeded_per_choice(client):
    r = client.completions.create(model="gpt", prompt=["ab", "cd"], n=2, max_tokens=6, temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.usage.prompt_tokens == 4
    # choice j of a prompt is drawn with seed + j
    alone = client.completions.create(model="gpt", prompt="ab", max_tokens=6, temperature=1.0, seed=8)
    assert r.choices[1].text == alone.choices[0].text
    assert r.choices[0].text != r.choices[1].text


def test_streaming_gives_the_same_text_in_pieces_and_ends_with_done(client, server):
    full = client.completions.create(model="gpt", prompt="Once", max_tokens=30, temperature=0).choices[0].text
    chunks = list(client.completions.create(model="gpt", prompt="Once", max_tokens=30, temperature=0, stream=True))
    assert len(chunks) > 3
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason == "length"
    stop = full[10:12]  # held back while it may be the start of the stop string, never sent
    cut = client.completions.create(model="gpt", prompt="Once", max_tokens=30, temperature=0, stop=stop)
    pieces = list(
        client.completions.create(model="gpt", prompt="Once", max_tokens=30, temperature=0, stop=stop, stream=True)
    )
    assert "".join(c.choices[0].text for c in pieces) == cut.choices[0].text == full[: full.index(stop)]
    assert pieces[-1].choices[0].finish_reason == "stop"
    body = {
        "model": "gpt",
        "prompt": "Once",
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][len("data: ") :])["usage"]
    assert usage == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}


def test_echo_with_max_tokens_0_scores_the_text_like_gpt_score(server, client, gpt):
    """What lm-eval's local-completions sends for log-likelihoods (token ids, echo, logprobs, max_tokens 0 or 1)."""
    text = "the cat sat on the mat"
    ref = gpt.score(text)  # conditions on end-of-text, GPT-2's document start
    ids = [gpt.tokenizer.eot_id] + gpt.tokenizer.encode(text)
    r = post(server, "/v1/completions", {"model": "gpt", "prompt": ids, "max_tokens": 0, "echo": True, "logprobs": 1})
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"] == text and lp["token_logprobs"][0] is None
    assert lp["tokens"][1:] == ref["tokens"]
    np.testing.assert_allclose(lp["token_logprobs"][1:], ref["logprobs"], atol=1e-4)
    assert math.isclose(sum(lp["token_logprobs"][1:]), ref["total_logprob"], abs_tol=1e-3)
    assert lp["text_offset"] == [0] + list(range(len(text)))
    # each top_logprobs entry holds the most likely token and the one scored
    for tok, top in zip(lp["tokens"][1:], lp["top_logprobs"][1:]):
        assert tok in top and len(top) <= 2
    # lm-eval's current payload: one generated token, parsed with [ctxlen:-1]
    ctxlen = 4
    r = post(server, "/v1/completions", {"model": "gpt", "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1})
    lp = r.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert len(lp) == len(ids) + 1
    assert math.isclose(sum(lp[ctxlen:-1]), sum(ref["logprobs"][ctxlen - 1 :]), abs_tol=1e-3)
    # a text prompt through the openai client: log p(token | the tokens before it), the first has none
    echo = client.completions.create(model="gpt", prompt=text, max_tokens=0, echo=True, logprobs=0)
    got = echo.choices[0].logprobs.token_logprobs
    want = gpt.token_logprobs(torch.tensor([gpt.tokenizer.encode(text)]))[0].tolist()
    assert got[0] is None and np.allclose(got[1:], want, atol=1e-4)


def test_same_seed_same_text_alone_and_in_a_busy_batch(server):
    mine = {"model": "gpt", "prompt": "Seeded request", "max_tokens": 48, "temperature": 1.0, "seed": 123}
    alone = post(server, "/v1/completions", mine).json()["choices"][0]["text"]
    before = engine_stats(server)
    with ThreadPoolExecutor(9) as pool:
        others = [
            pool.submit(
                post,
                server,
                "/v1/completions",
                {"model": "gpt", "prompt": f"other {i} " * (i + 1), "max_tokens": 300, "temperature": 0.7},
            )
            for i in range(8)
        ]
        deadline = time.time() + 20
        while engine_stats(server)["running"] < 4 and time.time() < deadline:
            time.sleep(0.01)
        busy = pool.submit(post, server, "/v1/completions", mine)
        assert busy.result().json()["choices"][0]["text"] == alone
        tokens = sum(f.result().json()["usage"]["completion_tokens"] for f in others + [busy])
    steps = engine_stats(server)["steps"] - before["steps"]
    assert steps < tokens / 2  # forward passes were shared


def test_client_disconnect_mid_stream_frees_its_slot(server):
    before = engine_stats(server)
    body = {"model": "gpt", "prompt": "x", "max_tokens": CONTEXT - 8, "stream": True, "temperature": 1.0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: {") for line in got)
    deadline = time.time() + 10
    while engine_stats(server)["running"] and time.time() < deadline:
        time.sleep(0.02)
    after = engine_stats(server)
    assert after["running"] == 0
    assert after["generated_tokens"] - before["generated_tokens"] < (CONTEXT - 8) // 2
    assert post(server, "/v1/completions", {"prompt": "still", "max_tokens": 2}).status_code == 200


# -- images, embeddings, classification ---------------------------------------------------------------
def test_images_openai_client_png_reranked_and_seeded(client):
    kwargs = dict(model="dalle", prompt="a red circle in the top left", n=2, size="64x64", response_format="b64_json")
    r = client.images.generate(**kwargs, extra_body={"candidates": 4, "seed": 3})
    images = [Image.open(io.BytesIO(base64.b64decode(d.b64_json))) for d in r.data]
    assert len(images) == 2 and all(im.size == (64, 64) and im.format == "PNG" for im in images)
    scores = [d.clip_score for d in r.data]
    assert scores == sorted(scores, reverse=True)  # CLIP's pick first
    again = client.images.generate(**kwargs, extra_body={"candidates": 4, "seed": 3})
    assert [d.b64_json for d in again.data] == [d.b64_json for d in r.data]
    with pytest.raises(openai.BadRequestError, match="64x64"):
        client.images.generate(model="dalle", prompt="a red circle", size="1024x1024")


def test_embeddings_text_and_image_normalised_equal_clip(client):
    from clip.openclip import load_clip

    png = shape_png()
    inputs = ["a red circle", "data:image/png;base64," + base64.b64encode(png).decode()]
    r = client.embeddings.create(model="clip", input=inputs)  # the client asks for base64 and decodes it
    floats = client.embeddings.create(model="clip", input=inputs, encoding_format="float")
    got = np.array([d.embedding for d in r.data])
    np.testing.assert_allclose(got, np.array([d.embedding for d in floats.data]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    clip = load_clip("clip").eval()
    np.testing.assert_allclose(got[0], clip.embed_texts(["a red circle"])[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(got[1], clip.embed_images([png])[0].numpy(), atol=1e-5)


def test_classifications_equal_the_zeroshot_cli(server, tmp_path, capsys):
    from clip.zeroshot import main

    path = tmp_path / "red.png"
    path.write_bytes(shape_png())
    labels = ["red circle", "blue square", "green star"]
    assert main(["--model", "shapes", "--labels", ",".join(labels), "--json", "--no-progress", str(path)]) == 0
    cli = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["probs"]
    image = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    r = post(server, "/v1/classifications", {"model": "clip", "image": image, "labels": labels}).json()
    api = r["data"][0]["probs"]
    assert list(api) == labels and r["data"][0]["label"] == max(cli, key=cli.get)
    for label in labels:
        assert abs(api[label] - cli[label]) < 2e-6


# -- auth, limits, bad requests -------------------------------------------------------------------------
def test_auth_errors_in_openai_json(server):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.completions.create(model="gpt", prompt="a")
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    r = httpx.get(server.url + "/v1/models")
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(server.url + "/v1/models", auth=("", KEY)).status_code == 200  # HTTP Basic, empty user


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_the_issue_s_exact_command(server):
    cmd = (
        "curl -s -u :$API_KEY -H 'Content-Type: application/json' " + server.url + "/v1/completions "
        """-d '{"prompt": "Q: What is human life expectancy in the United States?\\nA: ...\\n\\nQ: What is the """
        """meaning of life?\\n", "max_tokens": 16, "stop": ["\\n"]}'"""
    )
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env={**os.environ, "API_KEY": KEY})
    r = json.loads(out.stdout)
    assert r["object"] == "text_completion" and r["id"].startswith("cmpl-") and r["model"] == "gpt"
    choice = r["choices"][0]
    assert choice["index"] == 0 and choice["logprobs"] is None and "\n" not in choice["text"]
    assert choice["finish_reason"] in ("stop", "length")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env={**os.environ, "API_KEY": "nope"})
    assert json.loads(out.stdout)["error"]["code"] == "invalid_api_key"


def _bomb() -> str:
    im = Image.new("1", (9000, 9000))  # 81M pixels, a few KB as PNG
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_bad_request_corpus_gets_json_errors_and_the_server_stays_up(server):
    png = base64.b64encode(shape_png()).decode()
    two = ["a", "b"]
    cases = [
        ("/v1/completions", b"{not json", 400, None, "malformed JSON"),
        ("/v1/completions", b"[1, 2]", 400, None, "JSON object"),
        ("/v1/completions", {"prompt": 5}, 400, "prompt", "list of token ids"),
        ("/v1/completions", {"prompt": "a", "max_tokens": "16"}, 400, "max_tokens", "integer"),
        ("/v1/completions", {"prompt": "a", "temperature": "hot"}, 400, "temperature", "number"),
        ("/v1/completions", {"prompt": "a", "echo": 1}, 400, "echo", "boolean"),
        ("/v1/completions", {"prompt": "a", "max_tokens": -1}, 400, "max_tokens", "[0, 4096]"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 10**6}, 400, "max_tokens", "[0, 4096]"),
        ("/v1/completions", {"prompt": "a", "n": 0}, 400, "n", "[1, 16]"),
        ("/v1/completions", {"prompt": "a", "n": 99}, 400, "n", "[1, 16]"),
        ("/v1/completions", {"prompt": "a", "top_p": 0}, 400, "top_p", "(0, 1]"),
        ("/v1/completions", {"prompt": "x" * 2040, "max_tokens": 16}, 400, "prompt", "2048 tokens"),
        ("/v1/completions", {"prompt": [70000]}, 400, "prompt", "vocabulary"),
        ("/v1/completions", {"prompt": "a", "suffix": "b"}, 400, "suffix", "not supported"),
        ("/v1/completions", {"model": "nope", "prompt": "a"}, 404, "model", "does not exist"),
        ("/v1/completions", {"model": "clip", "prompt": "a"}, 400, "model", "needs a gpt model"),
        ("/v1/completions", {"prompt": "a" * (1 << 20)}, 413, None, "limit"),
        ("/v1/images/generations", {"n": 2}, 400, "prompt", "missing"),
        ("/v1/images/generations", {"prompt": "a red circle", "n": 100}, 400, "n", "[1, 16]"),
        ("/v1/images/generations", {"prompt": "a red circle", "size": "256x256"}, 400, "size", "64x64"),
        ("/v1/images/generations", {"prompt": "red " * 40}, 400, "prompt", "at most 96"),
        ("/v1/embeddings", {"input": 3}, 400, "input", "string"),
        ("/v1/embeddings", {"input": "data:image/png;base64,!!"}, 400, "input[0]", "base64"),
        (
            "/v1/embeddings",
            {"input": "data:image/png;base64," + base64.b64encode(b"x" * 700_000).decode()},
            413,
            "input[0]",
            "limit",
        ),
        ("/v1/classifications", {"image": png, "labels": ["a", "A"]}, 400, "labels", "duplicate"),
        ("/v1/classifications", {"image": png, "labels": ["a"]}, 400, "labels", "two labels"),
        ("/v1/classifications", {"image": png, "labels": two, "templates": ["no slot"]}, 400, "templates", "{}"),
        ("/v1/classifications", {"image": "aGVsbG8=", "labels": two}, 400, "image", "not a readable image"),
        ("/v1/classifications", {"image": _bomb(), "labels": two}, 400, "image", "too large"),
        ("/v1/nothing", {}, 404, None, "no route"),
        # once 500s: lone surrogates, deep nesting, a negative image top_k; and a body of too many values
        ("/v1/completions", {"prompt": "a\ud800b"}, 400, "prompt", "surrogate"),
        ("/v1/completions", {"model": "\udfff", "prompt": "a"}, 400, "model", "surrogate"),
        ("/v1/classifications", {"image": png, "labels": ["a\ud800", "b"]}, 400, "labels", "surrogate"),
        ("/v1/images/generations", {"prompt": "a red \ud800 circle"}, 400, "prompt", "surrogate"),
        ("/v1/completions", b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None, "nested"),
        ("/v1/images/generations", {"prompt": "a red circle", "top_k": -1}, 400, "top_k", ">= 0"),
        ("/v1/completions", b'{"prompt": [' + b",".join([b"1"] * 300_000) + b"]}", 400, None, "JSON values"),
        ("/v1/completions", {"prompt": ["a"] * 40, "n": 2}, 400, None, "at most 64"),
        ("/v1/classifications", {"image": png, "labels": [f"l{i}" for i in range(60)]}, 400, "labels", "4000"),
        ("/v1/classifications", {"image": png, "labels": two, "templates": ["{}"] * 101}, 400, "templates", "100"),
        ("/v1/embeddings", {"input": "word " * 1000}, 400, "input", "2000"),
        ("/v1/chat/completions", {"messages": []}, 400, "messages", "empty"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "messages", "role"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "messages",
            "text parts",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "tools": [{}]},
            400,
            "tools",
            "not supported",
        ),
    ]
    for path, body, status, param, words in cases:
        r = post(server, path, body)
        assert r.status_code == status, (path, body if isinstance(body, bytes) else str(body)[:80], r.text[:200])
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param and words in error["message"], (error, words)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert post(server, "/v1/completions", {"prompt": "ok", "max_tokens": 2}).status_code == 200


# -- no request can hurt another -----------------------------------------------------------------------
def test_bad_requests_beside_live_streams_fail_alone(server, gpt):
    """The requests that once failed every running stream (echo + logprobs of a one-token prompt, a top_p that
    is 0 in float32, seeds outside 64 bits) are answered, and the streams beside them finish untouched."""
    body = {"model": "gpt", "prompt": "live", "max_tokens": 120, "temperature": 0, "stream": True}
    want = gpt.generate("live", 120, temperature=0, document_start=False).text
    results: dict[int, list] = {}

    def stream(i: int) -> None:
        with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=120) as r:
            results[i] = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]

    with ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(stream, i) for i in range(3)]
        deadline = time.time() + 30
        while engine_stats(server)["running"] < 3 and time.time() < deadline:
            time.sleep(0.01)
        odd = [
            {"prompt": [65], "max_tokens": 0, "echo": True, "logprobs": 2},
            {"prompt": [65], "max_tokens": 3, "echo": True, "logprobs": 2},
            {"prompt": "x", "max_tokens": 8, "top_p": 1e-50},
            {"prompt": "x", "max_tokens": 6, "seed": 2**64 + 5},
            {"prompt": "x", "max_tokens": 6, "seed": -(2**63) - 1},
        ]
        answers = [post(server, "/v1/completions", b) for b in odd]
        for s in streams:
            s.result()
    assert [r.status_code for r in answers] == [200] * len(odd), [r.text[:200] for r in answers]
    echo = answers[0].json()["choices"][0]
    assert echo["text"] == "A" and echo["logprobs"]["token_logprobs"] == [None]
    seeded = post(server, "/v1/completions", {"prompt": "x", "max_tokens": 6, "seed": 5}).json()
    assert answers[3].json()["choices"][0]["text"] == seeded["choices"][0]["text"]  # seed mod 2**64
    for chunks in results.values():
        assert all("error" not in c for c in chunks)
        assert "".join(c["choices"][0]["text"] for c in chunks) == want
        assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_auth_comes_before_routing(server):
    for method, path in [("GET", "/v1/nonexistent"), ("GET", "/v1/models/"), ("GET", "/v1"), ("POST", "/v1/x/y")]:
        r = httpx.request(method, server.url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    assert httpx.get(server.url + "/v1/nonexistent", headers=AUTH).status_code == 404
    # HTTP Basic: the key as the password, whatever the user name; or as the user with no password
    assert httpx.get(server.url + "/v1/models", auth=("me", KEY)).status_code == 200
    assert httpx.get(server.url + "/v1/models", auth=(KEY, "")).status_code == 200
    assert httpx.get(server.url + "/v1/models", auth=("me", "wrong")).status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # pages and health need no key


def test_a_dropped_upload_is_not_a_traceback_in_the_log(server):
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head.encode() + b'{"prompt": "' + b"a" * 10_000)
        time.sleep(0.3)
    time.sleep(1.0)
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert "Traceback" not in server.log.read_text()


@pytest.fixture(scope="module")
def open_server(gpt_dir, tmp_path_factory):
    """No keys (loopback), a 32 MiB body limit, DALL·E and CLIP queues of 2."""
    root = tmp_path_factory.mktemp("open")
    srv = Server(["--gpt", str(gpt_dir), "--max-body-mb", "32", "--max-queue", "2"], root / "log").wait()
    yield srv
    srv.stop()


JSON = {"Content-Type": "application/json"}


def test_without_keys_only_local_hosts_and_json_bodies(open_server):
    url, body = open_server.url + "/v1/completions", json.dumps({"prompt": "a", "max_tokens": 2})
    assert httpx.post(url, content=body, headers=JSON).status_code == 200
    rebound = httpx.post(url, content=body, headers={**JSON, "Host": "attacker.example:8000"})
    assert rebound.status_code == 400 and "Host" in rebound.json()["error"]["message"]
    form = httpx.post(url, content=body, headers={"Content-Type": "text/plain"})  # what a cross-site form sends
    assert form.status_code == 415 and "application/json" in form.json()["error"]["message"]
    assert httpx.get(open_server.url + "/health", headers={"Host": "localhost:1"}).status_code == 200
    assert httpx.get(open_server.url + "/health", headers={"Host": "[::1]:8000"}).status_code == 200


def test_oversized_inputs_are_refused_while_health_answers_within_a_second(open_server):
    png = base64.b64encode(shape_png()).decode()
    heavy = [
        ("/v1/embeddings", json.dumps({"input": "word " * 1_600_000}).encode(), "input"),  # 8 MB of CLIP text
        ("/v1/completions", b'{"prompt": [' + b",".join([b"1"] * 8_000_000) + b"]}", None),  # 16 MB of ids
        ("/v1/completions", json.dumps({"prompt": "x" * 8_000_000}).encode(), "prompt"),
        (
            "/v1/classifications",
            json.dumps({"image": png, "labels": [f"l{i}" for i in range(1000)]}).encode(),
            "labels",
        ),
    ]
    worst, stop = [0.0], [False]

    def probe() -> None:
        while not stop[0]:
            t = time.perf_counter()
            assert httpx.get(open_server.url + "/health", timeout=10).status_code == 200
            worst[0] = max(worst[0], time.perf_counter() - t)
            time.sleep(0.02)

    with ThreadPoolExecutor(1) as pool:
        watcher = pool.submit(probe)
        time.sleep(0.2)
        for path, body, param in heavy:
            r = httpx.post(open_server.url + path, content=body, headers=JSON, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text[:200]
        stop[0] = True
        watcher.result()
    assert worst[0] < 1.0


def test_worker_queue_is_bounded_and_forgets_clients_that_left(open_server):
    """DALL·E's queue holds 2: a third waiting request is a 429; queued requests whose clients left are dropped
    unrun; and CLIP, on its own worker, answers while DALL·E is busy."""
    url = open_server.url
    long = {"prompt": "a red circle in the top left", "n": 1, "candidates": 64, "seed": 1}

    def workers() -> dict:
        return httpx.get(url + "/health", timeout=5).json()["workers"]

    def impatient() -> str:
        try:
            httpx.post(url + "/v1/images/generations", json=long, timeout=0.8)
            return "answered"
        except httpx.TimeoutException:
            return "left"

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(httpx.post, url + "/v1/images/generations", json=long, timeout=120)
        deadline = time.time() + 30
        while workers()["dalle"]["running"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        leaving = [pool.submit(impatient) for _ in range(2)]
        while workers()["dalle"]["waiting"] < 2 and time.time() < deadline:
            time.sleep(0.01)
        busy = httpx.post(url + "/v1/images/generations", json=long, timeout=30)
        assert busy.status_code == 429 and busy.json()["error"]["type"] == "rate_limit_error"
        image = "data:image/png;base64," + base64.b64encode(shape_png()).decode()
        labels = {"image": image, "labels": ["red circle", "blue square"], "templates": ["a {}."]}
        quick = httpx.post(url + "/v1/classifications", json=labels, timeout=30)
        assert quick.status_code == 200 and not first.done()  # not behind the images
        assert [f.result() for f in leaving] == ["left", "left"]
        assert first.result().status_code == 200
    deadline = time.time() + 30
    while workers()["dalle"]["waiting"] and time.time() < deadline:
        time.sleep(0.05)
    assert workers()["dalle"]["dropped"] == 2


def test_sigterm_ends_running_streams_with_an_error_event(gpt_dir, tmp_path):
    srv = Server(["--gpt", str(gpt_dir), "--no-packaged"], tmp_path / "log").wait()
    body = {"prompt": "x", "max_tokens": CONTEXT - 8, "stream": True, "temperature": 1.0}
    try:
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, headers=JSON, timeout=30) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            srv.proc.send_signal(signal.SIGTERM)
            got += list(lines)
        events = [line for line in got if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2][6:])["error"]
        assert error["code"] == "server_shutdown" and "shutting down" in error["message"]
        assert srv.proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
    finally:
        srv.stop()
    assert "Traceback" not in (tmp_path / "log").read_text()


def test_keep_alive_answers_are_not_held_back_by_nagle(server):
    """The listening socket says TCP, so asyncio turns Nagle off on each connection: a keep-alive answer's body
    no longer waits for the client's delayed ACK (a fixed +40 ms a request before)."""
    from multimodal.serve.cli import bind

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()
    times = []
    with httpx.Client(headers=AUTH, timeout=30) as http:  # one connection, kept alive
        for _ in range(7):
            t = time.perf_counter()
            assert http.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": 1}).status_code == 200
            times.append(time.perf_counter() - t)
    assert sorted(times)[3] < 0.035, times


def test_clip_tokenizer_memo_stays_bounded():
    from multimodal.tokenizers import ClipTokenizer

    tok, fresh = ClipTokenizer(), ClipTokenizer()
    tok.max_cache_words = 100
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = " ".join(letters[i % 26] + letters[(i // 26) % 26] + letters[(i * 7) % 26] + "zq" for i in range(500))
    assert tok.encode(words) == fresh.encode(words)
    assert len(tok._tok.cache) <= 100 < len(fresh._tok.cache)
    assert tok.encode(words) == fresh.encode(words)  # the same ids after the memo starts over


# -- chat, metrics, lm-eval ------------------------------------------------------------------------------------
def test_chat_completions_with_the_openai_client(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    prompt = "System: Be brief.\nUser: Hi there\nAssistant:"  # the documented default template
    r = client.chat.completions.create(model="gpt", messages=messages, max_tokens=12, temperature=0)
    ref = client.completions.create(model="gpt", prompt=prompt, max_tokens=12, temperature=0, stop=["\nUser:"])
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "gpt"
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == ref.choices[0].text
    assert r.usage.prompt_tokens == len(prompt.encode()) == ref.usage.prompt_tokens  # the byte tokenizer
    assert r.choices[0].finish_reason == ref.choices[0].finish_reason
    chunks = list(
        client.chat.completions.create(
            model="gpt",
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == r.choices[0].finish_reason
    # n choices drawn with seed + j; stop strings; logprobs with top alternatives
    two = client.chat.completions.create(model="gpt", messages=messages, max_tokens=8, n=2, seed=3, temperature=1.0)
    alone = client.chat.completions.create(model="gpt", messages=messages, max_tokens=8, seed=4, temperature=1.0)
    assert two.choices[1].message.content == alone.choices[0].message.content
    text = r.choices[0].message.content
    if len(text) > 4:
        cut = client.chat.completions.create(
            model="gpt", messages=messages, max_tokens=12, temperature=0, stop=text[3:5]
        )
        assert cut.choices[0].message.content == text[: text.index(text[3:5])]
    lp = client.chat.completions.create(
        model="gpt", messages=messages, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2
    )
    content = lp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == lp.choices[0].message.content
    assert all(len(t.top_logprobs) <= 2 and t.logprob <= 0 and t.top_logprobs[0].logprob >= t.logprob for t in content)


def test_chat_templates_tokenizer_s_own_then_file_then_default(tmp_path):
    from multimodal.serve.chat import DEFAULT_STOPS, TemplateError, load_template

    messages = [{"role": "user", "content": "hi"}]
    assert load_template(None, str(tmp_path)).render(messages) == "User: hi\nAssistant:"
    assert load_template(None, str(tmp_path)).stops == DEFAULT_STOPS
    own = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    config = {"chat_template": own, "bos_token": {"content": "<s>"}, "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    template = load_template(None, str(tmp_path))
    assert template.render(messages) == "<s><user>hi<assistant>" and template.stops == []
    (tmp_path / "mine.jinja").write_text("{% for m in messages %}{{ m['content'] | upper }}{% endfor %} =>")
    assert load_template(str(tmp_path / "mine.jinja"), str(tmp_path)).render(messages) == "HI =>"
    (tmp_path / "bad.jinja").write_text("{% for m in messages %}")
    with pytest.raises(TemplateError, match="bad.jinja"):
        load_template(str(tmp_path / "bad.jinja"), None)
    strict = tmp_path / "strict.jinja"
    strict.write_text("{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}")
    with pytest.raises(TemplateError, match="system first"):
        load_template(str(strict), None).render(messages)


def test_metrics_in_prometheus_text_format(server, client):
    from prometheus_client.parser import text_string_to_metric_families

    client.completions.create(model="gpt", prompt="metrics", max_tokens=3, temperature=0)
    httpx.get(server.url + "/v1/nowhere")  # a 401 before routing: route "unmatched"
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = [s for f in text_string_to_metric_families(r.text) for s in f.samples]

    def value(name: str, **labels) -> float:
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    assert value("multimodal:http_requests_total", route="/v1/completions", method="POST", status="200") >= 1
    assert value("multimodal:http_requests_total", route="unmatched", status="401") >= 1
    assert value("multimodal:prompt_tokens_total", model="gpt") >= 7
    assert value("multimodal:generation_tokens_total", model="gpt") >= 3
    assert value("multimodal:request_success_total", model="gpt", finished_reason="length") >= 1
    assert value("multimodal:time_to_first_token_seconds_count", model="gpt") >= 1
    assert value("multimodal:e2e_request_latency_seconds_count", model="gpt", route="/v1/completions") >= 1
    gauges = {(s.name, s.labels["model"]) for s in samples if s.name.startswith("multimodal:num_requests_")}
    assert gauges == {
        (f"multimodal:num_requests_{k}", m) for k in ("running", "waiting") for m in ("gpt", "dalle", "clip")
    }


def test_lm_eval_local_completions_gives_fewshot_loglikelihoods(gpt2_dir, tmp_path, monkeypatch):
    """lm-evaluation-harness's ``local-completions`` model pointed at the server: its log-likelihoods are
    ``multimodal.fewshot``'s (both condition on end-of-text, the document start), within 1e-4."""
    import lm_eval  # noqa: F401  (the [test] extra installs it)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.api.instance import Instance
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from multimodal.gpt.fewshot import _prompt_ids, choice_logprobs
    from multimodal.gpt.model import load_text_model

    model = load_text_model(str(gpt2_dir))
    tok = model.tokenizer
    pairs = [("<|endoftext|>Q: 2+2 =", " 4"), ("<|endoftext|>cheese =>", " fromage"), ("<|endoftext|>the cat", " sat")]
    srv = Server(["--gpt", str(gpt2_dir), "--no-packaged"], tmp_path / "log").wait()
    try:
        lm = LocalCompletionsAPI(
            base_url=srv.url + "/v1/completions", model="gpt", tokenizer=str(gpt2_dir), tokenizer_backend="huggingface"
        )
        requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
        theirs = lm.loglikelihood(requests, disable_tqdm=True)
    finally:
        srv.stop()
    choices = [tok.encode(c) for _, c in pairs]
    prompts = [_prompt_ids(tok, ctx.removeprefix("<|endoftext|>"), 64)[0] for ctx, _ in pairs]
    ours = choice_logprobs(model, prompts, choices)
    for (ll, _greedy), lp in zip(theirs, ours):
        assert abs(ll - float(lp.sum())) < 1e-4


# -- the playground page in a real browser ---------------------------------------------------------------
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)")
def test_playground_page_in_chromium(server, tmp_path):
    from playwright import sync_api

    png = tmp_path / "red.png"
    png.write_bytes(shape_png())
    labels = ["red circle", "blue square", "green star"]
    greedy = post(server, "/v1/completions", {"prompt": "The cat", "max_tokens": 24, "temperature": 0})
    nucleus = {"prompt": "The cat", "max_tokens": 24, "temperature": 0.9, "top_p": 0.8, "top_k": 5, "seed": 11}
    sampled = post(server, "/v1/completions", nucleus).json()["choices"][0]["text"]
    messages = [{"role": "user", "content": "hello"}]
    chat = post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 10, "temperature": 0})
    image = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    best = post(server, "/v1/classifications", {"image": image, "labels": labels}).json()["data"][0]["label"]
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            missing: list[str] = []
            page.on("response", lambda r: r.status == 404 and missing.append(r.url))
            page.goto(server.url + "/")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.wait_for_function("document.getElementById('gpt-model').options.length > 0")
            # a prompt, the streamed answer, probabilities on hover
            page.fill("#prompt", "The cat")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "24")
            page.click("#complete")
            page.wait_for_function("document.getElementById('completion-status').textContent.startsWith('done')")
            shown = page.eval_on_selector("#completion", "e => e.textContent")
            assert shown == greedy.json()["choices"][0]["text"]
            assert page.locator("#completion .token").count() > 3
            title = page.get_attribute("#completion .token >> nth=0", "title")
            assert "p=" in title and "%" in title
            # examples suited to the model, top-p / top-k / seed, and the request as curl and Python
            assert page.locator("#examples option").count() == 4  # "(choose one)" + the card's 3
            page.select_option("#examples", index=3)
            assert page.input_value("#prompt") == "Q: What is 2 + 2?\nA:"
            page.fill("#prompt", "The cat")
            page.fill("#temperature", "0.9")
            page.fill("#top-p", "0.8")
            page.fill("#top-k", "5")
            page.fill("#gpt-seed", "11")
            page.click("#complete")
            page.wait_for_function("document.getElementById('completion-status').textContent.startsWith('done')")
            assert page.eval_on_selector("#completion", "e => e.textContent") == sampled
            curl = page.eval_on_selector("#completion-curl", "e => e.textContent")
            assert curl.startswith("curl -s -u :$API_KEY") and '"top_k":5' in curl and '"seed":11' in curl
            python = page.eval_on_selector("#completion-python", "e => e.textContent")
            assert "client.completions.create(" in python and "top_p=0.8" in python and "extra_body={" in python
            # chat: the answer streamed into the conversation
            page.fill("#chat-temperature", "0")
            page.fill("#chat-max-tokens", "10")
            page.fill("#chat-input", "hello")
            page.click("#chat-send")
            page.wait_for_function("document.getElementById('chat-status').textContent.startsWith('done')")
            said = page.eval_on_selector("#chat-log .assistant .content", "e => e.textContent")
            assert said == chat.json()["choices"][0]["message"]["content"]
            # an image grid with CLIP's pick framed
            page.fill("#caption", "a blue square in the center")
            page.fill("#image-n", "3")
            page.fill("#candidates", "4")
            page.fill("#seed", "1")
            page.fill("#guidance", "2")
            page.click("#generate")
            page.wait_for_selector("#images .cell >> nth=2")
            assert page.locator("#images .cell").count() == 3
            assert page.get_attribute("#images .cell a >> nth=0", "download") == "image-1.png"
            assert '"guidance":2' in page.eval_on_selector("#image-curl", "e => e.textContent")
            assert page.locator("#images .cell.pick").count() == 1
            assert page.eval_on_selector("#images img", "e => e.naturalWidth") == 64
            # zero-shot: upload, labels, bar chart
            page.set_input_files("#file", str(png))
            page.wait_for_function("document.getElementById('preview').src.startsWith('data:image/png')")
            page.fill("#labels", ", ".join(labels))
            page.click("#classify")
            page.wait_for_selector("#bars .bar-row >> nth=2")
            assert page.locator("#bars .bar-row .label").first.text_content() == best
        finally:
            browser.close()
    assert requested and all(u.startswith(server.url) or u.startswith("data:") for u in requested)  # offline
    assert not missing, missing  # the favicon included


# -- start-up -------------------------------------------------------------------------------------------
def test_start_up_says_who_can_use_it(server):
    from multimodal.serve.cli import access_note

    assert "API keys: 1 configured" in server.log.read_text()
    assert f"listening on http://127.0.0.1:{server.port}" in server.log.read_text()
    assert "loopback only (127.0.0.1)" in access_note(set(), None, "127.0.0.1")  # the default without keys
    assert access_note(set(), "0.0.0.0", "0.0.0.0").startswith("warning: no API keys")
    assert "warning" not in access_note(set(), "::1", "::1")


def test_engine_prompts_prefilled_together_decode_like_generate(gpt):
    """Prompts of different lengths admitted at once share one prefill and every decode step; each still gives
    ``GPT.generate``'s greedy text, and a seeded one its sampled text."""
    import queue

    from multimodal.sampling import SamplingSettings, new_generator
    from multimodal.serve.engine import Choice, Engine

    engine = Engine(gpt, max_batch=4)
    prompts = ["a", "hello there", "the quick brown fox", "xy" * 20, "z"]  # 5 > 4 slots: one waits for a free one
    events: queue.Queue = queue.Queue()
    greedy = SamplingSettings(temperature=0)
    choices = [
        Choice(gpt.tokenizer.encode(p), 12, greedy, lambda e, i=i: events.put((i, e))) for i, p in enumerate(prompts)
    ]
    sampled = SamplingSettings(temperature=1.0, seed=9)
    choices.append(Choice(gpt.tokenizer.encode("seed"), 12, sampled, lambda e: events.put((5, e)), new_generator(9)))
    try:
        assert engine.submit(choices)
        texts, done = [""] * 6, 0
        while done < 6:
            i, e = events.get(timeout=30)
            texts[i] += e.text
            done += e.finish_reason is not None
        assert texts[:5] == [gpt.generate(p, 12, temperature=0, document_start=False).text for p in prompts]
        assert texts[5] == gpt.generate("seed", 12, temperature=1.0, seed=9, document_start=False).text
        assert engine.stats()["running"] == 0 and engine.steps < 6 * 12 / 2
    finally:
        engine.close()


def _run_choices(engine, choices, timeout: float = 60) -> list[tuple[str, Event]]:
    """Submit choices whose ``emit`` is unset; → (text, last event) of each."""
    import queue

    events: queue.Queue = queue.Queue()
    for i, c in enumerate(choices):
        c.emit = lambda e, i=i: events.put((i, e))
    assert engine.submit(choices)
    texts, last = [""] * len(choices), [None] * len(choices)
    while any(e is None for e in last):
        i, e = events.get(timeout=timeout)
        texts[i] += e.text
        if e.finish_reason is not None:
            last[i] = e
    return list(zip(texts, last))


def test_engine_refuses_a_bad_choice_on_submission(gpt):
    from multimodal.sampling import SamplingSettings
    from multimodal.serve.engine import Choice, Engine

    engine = Engine(gpt, max_batch=2)
    greedy = SamplingSettings(temperature=0)
    noop = lambda e: None  # noqa: E731
    try:
        bad = [
            (Choice([10**6], 4, greedy, noop), "outside the vocabulary"),
            (Choice([], 4, greedy, noop), "empty prompt"),
            (Choice([1] * CONTEXT, 8, greedy, noop), "exceed the context"),
            (Choice([1], -1, greedy, noop), "max_tokens"),
        ]
        settings = SamplingSettings(temperature=1.0)
        settings.top_p = 0.0  # changed after its own check
        bad.append((Choice([1], 4, settings, noop), "top_p"))
        for choice, words in bad:
            with pytest.raises(ValueError, match=words):
                engine.submit([Choice([1, 2], 3, greedy, noop), choice])  # the good one is not queued either
        assert engine.stats()["waiting"] == 0 and engine.stats()["running"] == 0
    finally:
        engine.close()


def test_engine_a_failing_row_fails_alone(gpt, monkeypatch, capsys):
    """A forward pass that raises for one row (here: any batch holding the poison token) ends that row only;
    the rows beside it give ``GPT.generate``'s text, in the prefill and in decode steps alike."""
    from multimodal.sampling import SamplingSettings
    from multimodal.serve.engine import Choice, Engine

    poison = 200
    real_hidden = gpt.hidden

    def hidden(ids, cache=None, pos=0):
        if (ids == poison).any():
            raise RuntimeError("poisoned row")
        return real_hidden(ids, cache, pos)

    engine = Engine(gpt, max_batch=4)
    monkeypatch.setattr(engine.model, "hidden", hidden)
    greedy = SamplingSettings(temperature=0)
    prompts = ["alpha", "beta gamma", "delta"]
    try:
        # the poison in the prompt: the shared prefill fails, then each prompt alone
        choices = [Choice(gpt.tokenizer.encode(p), 10, greedy, None) for p in prompts]
        choices.insert(1, Choice([poison, 65], 10, greedy, None))
        out = _run_choices(engine, choices)
        assert "poisoned row" in out[1][1].error and out[1][1].finish_reason == "error"
        monkeypatch.setattr(engine.model, "hidden", real_hidden)
        want = [gpt.generate(p, 10, temperature=0, document_start=False).text for p in prompts]
        assert [t for t, _ in out[:1] + out[2:]] == want
        assert all(e.error is None and e.finish_reason == "length" for _, e in out[:1] + out[2:])
        # the poison drawn mid-generation: a row forced to emit it fails at its next decode step
        monkeypatch.setattr(engine.model, "hidden", hidden)
        forced = SamplingSettings(temperature=1.0, top_k=1)
        real_pick = engine._pick

        def pick(logits, rows):
            if engine.running[rows[0]].settings is forced:
                return [poison] * len(rows)
            return real_pick(logits, rows)

        monkeypatch.setattr(engine, "_pick", pick)
        choices = [Choice(gpt.tokenizer.encode(p), 10, greedy, None) for p in prompts]
        choices.append(Choice([65], 10, forced, None))
        out = _run_choices(engine, choices)
        assert "poisoned row" in out[3][1].error
        assert [t for t, _ in out[:3]] == want
        deadline = time.time() + 10
        while engine.stats()["running"] and time.time() < deadline:  # finished rows leave at the next step
            time.sleep(0.01)
        assert engine.stats()["failed"] == 2 and engine.stats()["running"] == 0
    finally:
        engine.close()
    assert "RuntimeError: poisoned row" in capsys.readouterr().err  # the traceback goes to the server's log


def test_engine_one_token_echo_and_a_vanishing_top_p_beside_others(gpt):
    """The issue's two ordinary requests that used to fail every running stream: echo + logprobs of a
    one-token prompt, and a top_p that is 0 in float32 (now: the most likely token is kept, as greedy)."""
    from multimodal.sampling import SamplingSettings, new_generator
    from multimodal.serve.engine import Choice, Engine

    engine = Engine(gpt, max_batch=4)
    greedy = SamplingSettings(temperature=0)
    try:
        choices = [
            Choice(gpt.tokenizer.encode("hello"), 12, greedy, None),
            Choice([65], 0, greedy, None, logprobs=2, echo=True),
            Choice([65], 3, greedy, None, logprobs=2, echo=True),
            Choice(gpt.tokenizer.encode("x"), 6, SamplingSettings(1.0, None, 1e-50), None, new_generator(2**70)),
        ]
        out = _run_choices(engine, choices)
        assert all(e.error is None for _, e in out)
        assert out[0][0] == gpt.generate("hello", 12, temperature=0, document_start=False).text
        assert out[1] == ("A", out[1][1]) and out[1][1].finish_reason == "length"
        assert (
            out[3][0] == gpt.generate("x", 6, temperature=0, document_start=False).text
        )  # nucleus of one token: the argmax
    finally:
        engine.close()


def test_int8_engine_decodes_like_the_int8_model(gpt):
    """``--int8``: torch.ao's dynamic int8 Linear layers. Activations are quantised per call, so a row's numbers
    depend on its batch; alone, the engine gives the quantised model's own greedy text."""
    import copy

    from multimodal.sampling import SamplingSettings
    from multimodal.serve.cli import int8_linears
    from multimodal.serve.engine import Choice, Engine

    q = int8_linears(copy.deepcopy(gpt))
    assert type(q.lm_head).__module__.startswith("torch.ao.nn.quantized")
    engine = Engine(q, max_batch=2)
    try:
        [(text, last)] = _run_choices(engine, [Choice(gpt.tokenizer.encode("int8"), 12, SamplingSettings(0), None)])
        assert last.error is None and text == q.generate("int8", 12, temperature=0, document_start=False).text
    finally:
        engine.close()


def test_without_keys_no_key_is_asked(gpt):
    from fastapi.testclient import TestClient

    from multimodal.serve.app import Served, create_app
    from multimodal.serve.engine import Engine

    engine = Engine(gpt, max_batch=2)
    try:
        with TestClient(
            create_app([Served("tiny", "gpt", gpt, "memory", engine)]), base_url="http://127.0.0.1"
        ) as http:
            assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny"]
            r = http.post("/v1/completions", json={"prompt": "ab", "max_tokens": 3, "temperature": 0})
            assert r.json()["choices"][0]["text"] == gpt.generate("ab", 3, temperature=0, document_start=False).text
            assert "<title>multimodal playground</title>" in http.get("/").text
    finally:
        engine.close()


def test_bad_flags_and_checkpoints_are_one_error_line(tmp_path, capsys):
    from multimodal.serve.cli import main

    port = str(free_port())
    assert main(["--gpt", str(tmp_path / "missing"), "--no-packaged", "--port", port]) == 2
    assert main(["--no-packaged", "--port", port]) == 2
    assert main(["--clip-model", "ViT-B-32", "--no-packaged", "--port", port]) == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    assert err[0].startswith("error: --gpt:") and "no model to serve" in err[1] and "cannot listen" in err[3]
