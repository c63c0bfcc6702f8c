"""GPT-3's claims at CPU scale, the parts that need no training: the learnt BPE (GPT-2's tokenizer kind), the
real-translation tasks whose held-out words never appear in the prompt format, and the seed's inline prompts."""

from __future__ import annotations

import json
import random
import re

import torch

from data import tasks
from data.bpe import main as bpe_main
from multimodal.checkpoint import load_model, save_export
from multimodal.gpt import GPT, GPTConfig
from multimodal.gpt.fewshot import build_prompt, load_tasks
from multimodal.tokenizers import GPT2Tokenizer, train_byte_level_bpe

SAMPLE = [
    "sky = ciel; dog = chien; cat = chat; children =",
    "48 + 76 => 124\n12 - 30 => -18\n1999+2026=4025",
    "The French for children is enfants. Kinder is the German word for children.",
    "héllo wörld — ünïcode, tabs\tand  double  spaces",
]


def _corpus(n: int = 3000) -> list[str]:
    return tasks.training_documents(n, seed=3)


def test_bpe_round_trip_digits_alone_and_same_ids_as_gpt2s_reader(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = train_byte_level_bpe(_corpus(), 600, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"vocab.json", "merges.txt"} and tok.vocab_size == 600
    for text in SAMPLE + _corpus(50):
        ids = tok.encode(text)
        assert tok.decode(ids) == text
    # no merge joins digits: "1999" is four tokens, and the words of the corpus are merged (fewer tokens than bytes)
    assert [tok.decode([i]) for i in tok.encode("1999")] == ["1", "9", "9", "9"]
    assert len(tok.encode(SAMPLE[2])) < len(SAMPLE[2]) / 2
    # the learning pipeline (digits split first) and GPT-2's reader of the files give the same ids
    learnt = Tokenizer(models.BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")))
    learnt.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    learnt.decoder = decoders.ByteLevel()
    for text in SAMPLE + _corpus(200):
        assert learnt.encode(text).ids == tok.encode(text), text


def test_bpe_cli_is_deterministic_and_reports_json(tmp_path, capsys):
    for out in ("a", "b"):
        assert bpe_main(["--docs", "2000", "--vocab-size", "500", "--out", str(tmp_path / out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["vocab_size"] == 500 and summary["bytes_per_token"] > 1.5
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert bpe_main(["--vocab-size", "10", "--out", str(tmp_path / "c")]) == 2
    assert "error: --vocab-size" in capsys.readouterr().err


def test_shipped_task_tokenizer_is_a_gpt2_bpe_of_2048_tokens():
    tok = GPT2Tokenizer.from_directory("data/tokenizers/tasks")
    assert tok.vocab_size == 2048 and tok.encode("<|endoftext|>") == [tok.eot_id]
    assert tok.decode(tok.encode(SAMPLE[0])) == SAMPLE[0]
    assert len(tok.encode(" children")) == 1  # a word of the corpus is one token


def test_bpe_gpt_exports_with_its_tokenizer_and_hf_reads_the_same_ids(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from multimodal.gpt.hf import export_hf_gpt2

    tok = train_byte_level_bpe(_corpus(), 600, tmp_path / "tok")
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(vocab_size=600, context_length=64, tokenizer="gpt2", backbone={"width": 32, "layers": 2, "heads": 4}),
        tok,
    ).eval()
    save_export(model, tmp_path / "ours")
    again = load_model(tmp_path / "ours", "gpt")
    assert again.tokenizer.encode(SAMPLE[1]) == tok.encode(SAMPLE[1])
    export_hf_gpt2(model, tmp_path / "hf")
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    for text in SAMPLE:
        assert hf_tok(text)["input_ids"] == tok.encode(text), text
    ids = torch.tensor([tok.encode(SAMPLE[0])])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-4)


def test_real_translation_held_out_words_never_in_the_prompt_format():
    held = tasks.HELD_OUT_WORDS
    assert "children" in held and 20 <= len(held) <= len(tasks.REAL_WORDS) // 3
    assert tasks.REAL_WORDS["children"]["french"] == "enfants"
    docs = tasks.training_documents(6000, seed=0)
    text = "\n".join(docs)
    prompt_format = re.compile(r"(?:^|[\n;] ?)(" + "|".join(sorted(held)) + r") =>? ", re.M)
    assert not prompt_format.search(text)
    # ... but their translations are taught as facts in prose (every held-out word, several times)
    prose = " ".join(d for d in docs if "=" not in d)
    for word in held:
        assert re.search(rf"\b{word}\b", prose), word
    # and the prompt format is taught with the other words, inline and in lines
    assert "sky = ciel;" in text or "; sky = ciel" in text
    assert re.search(r"^Translate English to French\.\n\w+ => ", text, re.M)
    for lang in tasks.REAL_LANGUAGES:
        test = tasks.instances(lang, 40, split="test")
        assert {r["prompt"] for r in test} <= held and len(test) == len(held)
        assert all(r["prompt"] not in held for r in tasks.instances(lang, 60, split="train"))


def test_every_task_held_out_instances_never_in_training_documents():
    text = "\n".join(tasks.training_documents(6000, seed=0))
    lines = set(re.split(r"\n|; ", text))
    for name in tasks.TASKS:
        test = tasks.instances(name, 30, split="test")
        assert test, name
        shown = {tasks.format_example(r["prompt"], r["completion"]) for r in test}
        shown |= {f"{r['prompt']} = {r['completion']}" for r in test}
        assert not shown & lines, name


def test_seed_prompt_inline_style_and_k0_is_ambiguous():
    examples = [("sky", "ciel"), ("dog", "chien"), ("cat", "chat")]
    assert build_prompt("children", examples, style="inline") == "sky = ciel; dog = chien; cat = chat; children ="
    assert build_prompt("children", [], style="inline") == "children ="
    # a translation query's examples share its language; with none, three languages fit the bare query
    queries, pool = load_tasks("dictionary", 5)["french"]
    assert {r["group"] for r in pool} == {"french"} and {r["group"] for r in queries} == {"french"}
    r = tasks.sample("german", random.Random(0), "test")
    assert r["completion"] in r["choices"] and len(set(r["choices"])) == len(r["choices"])


def test_lightning_checkpoint_carries_the_bpe_so_every_tool_reads_it(tmp_path):
    from multimodal.gpt.lm import GPTModule

    train_byte_level_bpe(_corpus(), 600, tmp_path / "tok")
    config = GPTConfig(
        vocab_size=600, context_length=64, tokenizer="gpt2", backbone={"width": 32, "layers": 1, "heads": 2}
    )
    module = GPTModule(config, tokenizer_dir=str(tmp_path / "tok"))
    ckpt = {"state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()}}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "last.ckpt")
    for f in (tmp_path / "tok").iterdir():
        f.unlink()  # the run's tokenizer folder is gone: the checkpoint alone must be enough
    model = load_model(tmp_path / "last.ckpt", "gpt")
    assert model.tokenizer is not None and model.tokenizer.encode(SAMPLE[0]) == module.model.tokenizer.encode(SAMPLE[0])
    save_export(model, tmp_path / "export")  # and it exports its tokenizer on from there
    assert GPT2Tokenizer.from_directory(tmp_path / "export").encode(SAMPLE[1]) == model.tokenizer.encode(SAMPLE[1])


def test_checkpoint_extra_files_with_a_path_are_refused(tmp_path, tiny_gpt):
    import base64

    import pytest

    from multimodal.checkpoint import LIGHTNING_KEY, CheckpointError, payload

    files = {"../evil.json": base64.b64encode(b"{}").decode()}
    ckpt = {"state_dict": {f"model.{k}": v for k, v in tiny_gpt.state_dict().items()}}
    ckpt[LIGHTNING_KEY] = payload(tiny_gpt, {"prefix": "model.", "files": files})
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="not a plain file name"):
        load_model(tmp_path / "bad.ckpt", "gpt")
    assert not (tmp_path.parent / "evil.json").exists()


SEED_PROMPT = "sky = ciel; dog = chien; cat = chat; children ="


def test_packaged_gpt_answers_the_seed_prompt_and_translates_held_out_words():
    import multimodal
    from multimodal.gpt.fewshot import evaluate

    gpt = multimodal.load("gpt")
    assert gpt.config.tokenizer == "gpt2" and gpt.tokenizer.vocab_size == 2048
    assert gpt.generate(SEED_PROMPT, 4, temperature=0, stop=[";"]).text.strip() == "enfants"
    # sampled at the CLI's defaults (temperature 1): the first word is enfant(s) for nearly every seed
    firsts = [gpt.generate(SEED_PROMPT, 3, seed=s).text.split(";")[0].split() for s in range(20)]
    assert sum(f[:1] in (["enfant"], ["enfants"]) for f in firsts) >= 18
    # the README's figure: held-out words, four examples, English -> French
    report = evaluate(gpt, load_tasks("french", 32), [0, 4], progress=False, style="inline")
    assert report["n"]["french"] == len(tasks.HELD_OUT_WORDS)
    assert report["results"]["french"][4] >= 0.85 and report["results"]["french"][0] <= 0.4
