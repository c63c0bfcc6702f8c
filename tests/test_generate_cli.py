import json

import pytest

from multimodal.checkpoint import save_export
from multimodal.gpt.generate import main


def test_generate_from_export_json(tiny_gpt, tmp_path, capsys):
    out = save_export(tiny_gpt, tmp_path / "m")
    args = ["ab", "--checkpoint", str(out), "--max-tokens", "5", "--temperature", "0.8", "--seed", "1", "--json"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first  # same seed, same text
    record = json.loads(first)
    assert set(record) >= {"prompt", "completion", "tokens", "finish_reason", "prompt_truncated"}


def test_long_prompt_warns_on_stderr(tiny_gpt, tmp_path, capsys):
    out = save_export(tiny_gpt, tmp_path / "m")
    assert main(["q" * 200, "--checkpoint", str(out), "--max-tokens", "4", "--json"]) == 0
    captured = capsys.readouterr()
    assert "cut from the left" in captured.err and json.loads(captured.out)["prompt_truncated"] is True


def test_hf_directory(gpt2_dir, capsys):
    assert main(["the cat", "--checkpoint", str(gpt2_dir), "--max-tokens", "3", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("the cat")


@pytest.mark.parametrize("case", ["missing", "damaged", "not_a_model", "bad_flag"])
def test_bad_input_is_one_line_exit_2(case, tiny_gpt, tmp_path, capsys):
    path = tmp_path / "x"
    args_extra = []
    if case == "damaged":
        save_export(tiny_gpt, path)
        (path / "model.safetensors").write_bytes(b"\x00" * 10)
    elif case == "not_a_model":
        path.mkdir()
        (path / "config.json").write_text("{}")
    elif case == "bad_flag":
        save_export(tiny_gpt, path)
        args_extra = ["--top-p", "1.5"]
    code = main(["hi", "--checkpoint", str(path), *args_extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "\n" not in err and "Traceback" not in err


def test_fail_turns_any_exception_into_one_error_line(capsys):
    from multimodal.cli import fail

    assert fail(ValueError("first line\nsecond line")) == 2
    assert capsys.readouterr().err == "error: first line\n"
    assert fail(RuntimeError()) == 2
    assert capsys.readouterr().err == "error: RuntimeError\n"
    assert fail("--top-k must be >= 0") == 2
    assert capsys.readouterr().err == "error: --top-k must be >= 0\n"


def test_default_max_tokens_never_cuts_the_prompt(tiny_gpt, tmp_path, capsys):
    out = save_export(tiny_gpt, tmp_path / "m")  # context 32 (tests/conftest.py)
    prompt = "q" * (tiny_gpt.config.context_length - 10)
    assert main([prompt, "--checkpoint", str(out), "--temperature", "0", "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["prompt_truncated"] is False and "cut from the left" not in captured.err
    assert record["tokens"] <= 11  # only what fits after the prompt


def test_packaged_gpt_is_the_default_with_a_note(capsys):
    """The shipped GPT: generate, score and fewshot with no --checkpoint, one stderr note each."""
    from multimodal.checkpoint import packaged_path
    from multimodal.gpt.fewshot import main as fewshot
    from multimodal.gpt.score import main as score

    assert packaged_path("gpt") is not None, "no GPT packaged (python -m multimodal.demo build)"
    prompt = "sky = ciel; dog = chien; cat = chat; dog ="
    assert main([prompt, "--temperature", "0", "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["prompt_truncated"] is False and record["completion"].startswith(" ")  # a word follows " ="
    assert captured.err.count("note: the packaged GPT (") == 1
    assert score(["sky => ciel", "--json"]) == 0
    assert "note:" in capsys.readouterr().err
    assert fewshot(["--tasks", "lexicon", "--n", "10", "--shots", "0,4", "--json", "--no-progress"]) == 0
    acc = json.loads(capsys.readouterr().out)["accuracy"]["lexicon"]
    assert acc["0"] == 0.0  # a held-out made-up word cannot be known without the prompt's examples


def test_stop_backslash_n_is_a_newline(capsys):
    """``--stop "\\n"`` (what a shell passes as a backslash and an n) stops at the end of the line, as the
    playground's stop box does; ``\\\\`` is a backslash and other backslashes are kept."""
    from multimodal.cli import unescape

    assert unescape(r"\n") == "\n" and unescape(r"a\tb\r") == "a\tb\r" and unescape(r"\\n") == "\\n"
    assert unescape(r"C:\path") == r"C:\path"
    prompt = "salad => saladra\njacket => jacketra\nplant => plantra\nnight => nightra\ncircle =>"
    args = [prompt, "--temperature", "0", "--max-tokens", "40", "--json"]
    assert main([*args, "--stop", r"\n"]) == 0
    stopped = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    free = json.loads(capsys.readouterr().out)
    assert "\n" in free["completion"]  # without the stop the packaged GPT goes on to the next line
    assert stopped["finish_reason"] == "stop" and stopped["completion"] == free["completion"].split("\n")[0]
