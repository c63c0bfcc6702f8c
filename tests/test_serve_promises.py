"""The service's README promises that tests/test_serve.py does not hold, through the public HTTP API only: keys
from ``MULTIMODAL_API_KEYS``, the ``--max-tokens`` / ``--max-n`` limits in OpenAI's error JSON, images as
``response_format: "url"`` with ``rerank`` and ``guidance``, a list of images to ``/v1/classifications``, and a
seed's text alone and among at least 4 running requests.

Two servers, each ``python -m multimodal.serve`` in a subprocess on a free loopback port: a limited one (a tiny
GPT only, keys from the environment) and a full one (the tiny GPT, the packaged DALL·E and CLIP, no keys)."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image, ImageDraw

from tests.serve_helpers import Server

ROOT = Path(__file__).resolve().parents[1]
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory) -> Path:
    from multimodal.checkpoint import save_export
    from multimodal.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=257, context_length=512, tokenizer="byte", backbone={"width": 32, "layers": 2, "heads": 4}
    )
    return save_export(GPT(config), tmp_path_factory.mktemp("promises") / "gpt")


@pytest.fixture(scope="module")
def limited(gpt_dir, tmp_path_factory):
    """A GPT only, keys from MULTIMODAL_API_KEYS (spaces and an empty entry around them), tight limits."""
    args = ["--gpt", str(gpt_dir), "--no-packaged", "--max-tokens", "8", "--max-n", "2"]
    srv = Server(args, tmp_path_factory.mktemp("limited") / "log", {"MULTIMODAL_API_KEYS": " key-one , key-two,"})
    yield srv.wait()
    srv.stop()


@pytest.fixture(scope="module")
def full(gpt_dir, tmp_path_factory):
    srv = Server(["--gpt", str(gpt_dir)], tmp_path_factory.mktemp("full") / "log")
    yield srv.wait()
    srv.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def openai_error(r: httpx.Response, status: int, param: str | None = None) -> dict:
    """The body of an error response: OpenAI's ``{"error": {message, type, param, code}}`` with ``status``."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def png(color: str) -> str:
    """A shapes-world-like picture (a coloured disc on black, 64×64) as a data URL."""
    im = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(im).ellipse([8, 8, 30, 30], fill=color)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# -- keys, limits ---------------------------------------------------------------------------------------
def test_keys_from_the_environment_as_bearer_or_basic(limited):
    assert "API keys: 2 configured" in limited.log.read_text()
    assert openai_error(httpx.get(limited.url + "/v1/models"), 401)["code"] == "invalid_api_key"
    assert openai_error(httpx.get(limited.url + "/v1/models", headers=bearer("key-three")), 401)
    assert httpx.get(limited.url + "/v1/models", headers=bearer("key-one")).status_code == 200
    assert httpx.get(limited.url + "/v1/models", auth=("", "key-two")).status_code == 200  # curl -u :KEY


def test_max_tokens_and_max_n_are_limits_in_openai_error_json(limited):
    auth = bearer("key-one")
    ok = limited.post("/v1/completions", {"prompt": "ab", "max_tokens": 8, "n": 2, "temperature": 0}, auth)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["choices"]) == 2 and ok.json()["usage"]["completion_tokens"] <= 16
    over = limited.post("/v1/completions", {"prompt": "ab", "max_tokens": 9}, auth)
    assert "8" in openai_error(over, 400, "max_tokens")["message"]  # the limit is named
    over = limited.post("/v1/completions", {"prompt": "ab", "max_tokens": 2, "n": 3}, auth)
    assert "2" in openai_error(over, 400, "n")["message"]
    # the server is still up and serves the next request
    assert limited.post("/v1/completions", {"prompt": "ab", "max_tokens": 1}, auth).status_code == 200


# -- images ----------------------------------------------------------------------------------------------
def decode_url(url: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    data = base64.b64decode(url[len(prefix) :])
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.size == (64, 64)
    return data


def test_image_urls_with_rerank_and_guidance(full):
    body = {"model": "dalle", "prompt": "a red circle in the top left", "n": 2, "candidates": 2, "seed": 3}
    b64 = full.post("/v1/images/generations", {**body, "response_format": "b64_json"}).json()
    urls = full.post("/v1/images/generations", {**body, "response_format": "url"}).json()
    # a data URL holds the very PNG the b64_json answer holds, CLIP's pick first
    assert urls["reranked"] is True and [set(d) & {"url", "b64_json"} for d in urls["data"]] == [{"url"}] * 2
    assert [decode_url(d["url"]) for d in urls["data"]] == [base64.b64decode(d["b64_json"]) for d in b64["data"]]
    scores = [d["clip_score"] for d in urls["data"]]
    assert scores == sorted(scores, reverse=True)
    # rerank false: the same two candidates, in drawing order, without scores
    plain = full.post("/v1/images/generations", {**body, "response_format": "url", "rerank": False}).json()
    assert plain["reranked"] is False and all("clip_score" not in d for d in plain["data"])
    assert [d["candidate"] for d in plain["data"]] == [0, 1]
    assert sorted(decode_url(d["url"]) for d in plain["data"]) == sorted(decode_url(d["url"]) for d in urls["data"])
    # guidance reaches the sampler: the model's own scale (1.5) when left out, 1 (off) draws other images
    one = {**body, "n": 1, "candidates": 1, "response_format": "url", "rerank": False}
    drawn = {
        g: full.post("/v1/images/generations", {**one, "guidance": g}).json()["data"][0]["url"] for g in (1.0, 1.5)
    }
    default = full.post("/v1/images/generations", one).json()["data"][0]["url"]
    assert default == drawn[1.5] and drawn[1.0] != drawn[1.5]


# -- zero-shot classification --------------------------------------------------------------------------------
def test_a_list_of_images_gets_one_row_each_equal_to_asking_alone(full):
    labels = ["red circle", "blue circle", "green square"]
    images = [png("red"), png("blue")]
    both = full.post("/v1/classifications", {"model": "clip", "image": images, "labels": labels})
    assert both.status_code == 200, both.text
    rows = both.json()["data"]
    assert [r["index"] for r in rows] == [0, 1] and [r["label"] for r in rows] == ["red circle", "blue circle"]
    for image, row in zip(images, rows):
        alone = full.post("/v1/classifications", {"model": "clip", "image": image, "labels": labels}).json()
        assert len(alone["data"]) == 1
        for label in labels:
            assert row["probs"][label] == pytest.approx(alone["data"][0]["probs"][label], abs=1e-6)
        assert sum(row["probs"].values()) == pytest.approx(1, abs=1e-5)
    bad = full.post(
        "/v1/classifications", {"model": "clip", "image": [images[0], "data:image/png;base64,AAAA"], "labels": labels}
    )
    assert "image[1]" in openai_error(bad, 400, "image")["message"]


# -- continuous batching ------------------------------------------------------------------------------------
def test_seeded_text_is_the_same_alone_and_among_four_running_requests(full):
    def running() -> int:
        return httpx.get(full.url + "/health", timeout=5).json()["engines"]["gpt"]["running"]

    mine = {"model": "gpt", "prompt": "Seeded request", "max_tokens": 24, "temperature": 1.0, "seed": 123}
    alone = full.post("/v1/completions", mine).json()["choices"][0]["text"]
    # a tiny model decodes fast: a burst of 8 long requests, tried up to 3 times, so that the seeded request is
    # sent while at least 4 of them are seen running together
    seen = 0
    for _attempt in range(3):
        with ThreadPoolExecutor(9) as pool:
            others = [
                pool.submit(full.post, "/v1/completions", {"model": "gpt", "prompt": f"other {i}", "max_tokens": 400})
                for i in range(8)
            ]
            deadline = time.time() + 30
            while (seen := running()) < 4 and time.time() < deadline and not all(f.done() for f in others):
                time.sleep(0.005)
            if seen >= 4:
                busy = pool.submit(full.post, "/v1/completions", mine)
                assert busy.result().json()["choices"][0]["text"] == alone
            assert all(f.result().status_code == 200 for f in others)
        if seen >= 4:
            break
    assert seen >= 4, f"only {seen} requests running: the seeded request never ran among others"
