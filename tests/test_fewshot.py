"""Few-shot evaluation: prompt format, choice scoring, exact match, the CLI, and the built-in tasks."""

import json
import random

import pytest
import torch

from data import tasks
from multimodal.checkpoint import save_export
from multimodal.gpt.fewshot import build_prompt, choice_logprobs, evaluate, load_tasks, main
from tests.fewshot_helpers import always_predicts, tiny_gpt


def test_prompt_format_description_examples_query():
    p = build_prompt(
        "sea otter", [("cheese", "fromage"), ("peppermint", "menthe poivrée")], "Translate English to French."
    )
    assert p == "Translate English to French.\ncheese => fromage\npeppermint => menthe poivrée\nsea otter =>"
    assert build_prompt("12 + 3") == "12 + 3 =>"  # zero-shot, no description


def test_choice_logprobs_match_manual_computation():
    model = tiny_gpt()
    tok = model.tokenizer
    prompts = [[tok.eot_id, *tok.encode("ab =>")], [tok.eot_id, *tok.encode("a longer prompt =>")]]
    choices = [tok.encode(" xyz"), tok.encode(" q")]
    got = choice_logprobs(model, prompts, choices, batch_size=2)  # padded together in one batch
    for p, c, lp in zip(prompts, choices, got):
        ids = torch.tensor([p + c])
        logp = model(ids[:, :-1]).log_softmax(-1)[0]  # one unpadded sequence at a time
        manual = [logp[len(p) - 1 + i, t] for i, t in enumerate(c)]
        assert torch.allclose(lp, torch.stack(manual), atol=1e-5)


def test_multiple_choice_picks_the_answer_the_model_must_prefer():
    model = always_predicts("a")
    records = [
        {"context": "q1", "choices": ["bbb", "aaa", "abab"], "answer": 1},
        {"context": "q2", "choices": ["aa", "zz"], "answer": 0},
        {"context": "q3", "choices": ["aa", "zz"], "answer": 1},  # labelled wrong: the model must miss it
    ]
    report = evaluate(model, {"t": (records, records)}, [0, 1], metric="choice", progress=False)
    assert report["results"]["t"] == {0: pytest.approx(2 / 3), 1: pytest.approx(2 / 3)}


def test_exact_match_uses_greedy_completion():
    model = always_predicts("a")
    records = [{"prompt": "x", "completion": "aa"}, {"prompt": "y", "completion": "ab"}]
    report = evaluate(model, {"t": (records, records)}, [0], max_tokens=2, progress=False)
    assert report["results"]["t"][0] == 0.5


def test_builtin_tasks_held_out_from_training_documents():
    lines = {line for doc in tasks.training_documents(3000, seed=0) for line in doc.split("\n")}
    for name in ("add2", "reverse", "translate"):
        test = tasks.instances(name, 30, split="test")
        assert len(test) >= 15  # reverse has one instance per word: 15 % of ~125 words are held out
        assert not {tasks.format_example(r["prompt"], r["completion"]) for r in test} & lines
        for r in test:
            assert r["choices"][r["answer"]] == r["completion"] and len(set(r["choices"])) == len(r["choices"])
    r = tasks.sample("add3", random.Random(1))
    a, op, b = r["prompt"].split()
    assert int(r["completion"]) == int(a) + int(b) and op == "+" and len(a) <= 3
    rev = tasks.sample("reverse", random.Random(2))
    assert rev["prompt"] == rev["completion"][::-1]
    # a translation query does not say which language: its examples must share the query's language
    queries, pool = load_tasks("translate", 5)["translate"]
    assert {r["group"] for r in pool} == set(tasks.LANGUAGES)


def test_cli_json_on_jsonl_and_builtin(tmp_path, capsys):
    ckpt = save_export(tiny_gpt(), tmp_path / "m")
    f = tmp_path / "mc.jsonl"
    f.write_text(
        "\n".join(json.dumps({"context": f"q{i}", "choices": ["yes", "no"], "answer": i % 2}) for i in range(6))
    )
    args = ["--checkpoint", str(ckpt), "--tasks", f"{f},add2", "--n", "4", "--shots", "0,2", "--json", "--no-progress"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["accuracy"]) == {"mc", "add2"} and set(out["accuracy"]["mc"]) == {"0", "2"}
    assert out["n"] == {"mc": 4, "add2": 4} and all(0 <= a <= 1 for a in out["accuracy"]["mc"].values())


@pytest.mark.parametrize("case", ["missing_ckpt", "bad_shots", "unknown_task", "bad_jsonl", "bad_answer"])
def test_cli_bad_input_one_line_exit_2(case, tmp_path, capsys):
    ckpt = str(save_export(tiny_gpt(), tmp_path / "m"))
    f = tmp_path / "t.jsonl"
    f.write_text('{"context": "a", "choices": ["x", "y"], "answer": 0}\n')
    args = {"--checkpoint": ckpt, "--tasks": str(f), "--shots": "0"}
    if case == "missing_ckpt":
        args["--checkpoint"] = str(tmp_path / "nope")
    elif case == "bad_shots":
        args["--shots"] = "0,x"
    elif case == "unknown_task":
        args["--tasks"] = "add7"
    elif case == "bad_jsonl":
        f.write_text('{"context": "a", "choices": ["x", "y"], "answer": 0}\n{oops\n')
    else:
        f.write_text('{"context": "a", "choices": ["x", "y"], "answer": 5}\n')
    assert main([x for kv in args.items() for x in kv] + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_jsonl_with_unicode_line_separators_and_every_record_scored(tmp_path, capsys):
    # U+2028 / U+2029 / U+0085 are valid raw inside JSON strings: they must not split a record
    records = [
        {"context": f"line{i}\u2028sep\u2029para\x85next =>", "choices": ["yes", "no"], "answer": i % 2}
        for i in range(130)
    ]
    path = tmp_path / "seps.jsonl"
    path.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n", encoding="utf-8")
    (queries, pool) = load_tasks(str(path), None)["seps"]
    assert len(queries) == len(pool) == 130 and queries[0]["context"] == records[0]["context"]
    ckpt = save_export(tiny_gpt(), tmp_path / "m")
    assert main(["--checkpoint", str(ckpt), "--tasks", str(path), "--shots", "0", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == {"seps": 130}  # all of them, not the first 100
    assert report["conventions"]["norm"] == "token" and "add_bos_token=True" in report["conventions"]["document_start"]
    assert main(["--checkpoint", str(ckpt), "--tasks", str(path), "--shots", "0", "--n", "7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == {"seps": 7}


def test_wilson_interval_contains_the_rate_and_narrows_with_n():
    from multimodal.gpt.fewshot import wilson

    lo, hi = wilson(8, 10)
    assert 0 < lo < 0.8 < hi < 1
    assert wilson(0, 20)[0] == 0 and wilson(0, 20)[1] > 0.1  # 0/20 is not "certainly 0"
    assert wilson(20, 20)[1] == 1 and wilson(20, 20)[0] < 0.9
    narrow = wilson(80, 100)
    assert narrow[1] - narrow[0] < hi - lo
    assert abs(wilson(80, 100)[0] - 0.7111) < 1e-3  # the textbook value for 80/100


def test_cli_several_checkpoints_json_intervals_and_plot(tmp_path, capsys):
    from PIL import Image

    small = save_export(tiny_gpt(seed=0), tmp_path / "small")
    other = save_export(tiny_gpt(seed=1), tmp_path / "other")
    png = tmp_path / "acc.png"
    args = ["--checkpoint", str(small), "--checkpoint", str(other), "--tasks", "lexicon,compare", "--n", "5"]
    assert main([*args, "--shots", "0,1", "--json", "--plot", str(png), "--no-progress"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["checkpoint"] for r in records] == [str(small), str(other)]
    for r in records:
        for task in ("lexicon", "compare"):
            for k in ("0", "1"):
                lo, hi = r["interval95"][task][k]
                assert lo <= r["accuracy"][task][k] <= hi and hi - lo > 0.2  # 5 queries: a wide interval
        assert set(r["mean"]) == {"0", "1"} and r["params"] > 0
    assert Image.open(png).size == (760, 480)
    assert main([*args, "--shots", "0", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "[" in table and "95% Wilson" in table and "other" in table  # one table per model, titled


def test_cli_plot_into_missing_directory_is_one_line_error(tmp_path, capsys):
    ckpt = save_export(tiny_gpt(), tmp_path / "m")
    args = ["--checkpoint", str(ckpt), "--tasks", "add2", "--plot", str(tmp_path / "no" / "a.png")]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error: --plot")


def test_cli_norm_token_char_none_by_hand(tmp_path, capsys):
    """``--norm``: a choice's log-likelihood (after `` => ``, the choice with its leading space) divided by its
    tokens (GPT-3), by its characters (lm-eval's acc_norm) or not at all (acc). Multi-byte choices have more
    tokens than characters, and choices of different lengths separate the sum from the means, so the three
    rules pick differently: each accuracy is checked against the picks computed here."""
    model = tiny_gpt()
    ckpt = save_export(model, tmp_path / "m")
    tok = model.tokenizer
    words = ["a", "yes", "no way", "é", "éé", "日本", "naïve", "zz top", "qq"]
    rng = random.Random(3)
    records = [{"context": f"q{i}", "choices": rng.sample(words, 3)} for i in range(16)]

    def scores(record: dict) -> dict[str, list[float]]:
        prompt = [tok.eot_id, *tok.encode(f"{record['context']} =>")]
        out = {"token": [], "char": [], "none": []}
        for c in record["choices"]:
            cont = tok.encode(" " + c)
            with torch.no_grad():
                logp = model(torch.tensor([prompt + cont])).log_softmax(-1)[0]
            total = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(cont))
            out["token"].append(total / len(cont))
            out["char"].append(total / len(c))
            out["none"].append(total)
        return out

    picks = [{k: max(range(3), key=v.__getitem__) for k, v in scores(r).items()} for r in records]
    for r, p in zip(records, picks):
        r["answer"] = p["char"]  # labelled by acc_norm's rule: --norm char gets every one right
    want = {norm: sum(p[norm] == p["char"] for p in picks) / len(picks) for norm in ("token", "char", "none")}
    assert want["char"] == 1 and len(set(want.values())) == 3, want  # the three rules disagree here
    f = tmp_path / "mc.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in records))
    for norm, accuracy in want.items():
        args = ["--checkpoint", str(ckpt), "--tasks", str(f), "--shots", "0", "--norm", norm, "--json", "--no-progress"]
        assert main(args) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["conventions"]["norm"] == norm
        assert out["accuracy"]["mc"]["0"] == pytest.approx(accuracy), norm
