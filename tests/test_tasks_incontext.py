"""The in-context tasks (a made-up lexicon or suffix drawn fresh per prompt), held out from training, and
their few-shot prompts: the answer exists only in the prompt's examples."""

import random

from data import tasks
from multimodal.gpt.fewshot import build_prompt, own_examples


def test_held_out_made_up_words_never_appear_in_training_documents():
    text = "\n".join(tasks.training_documents(3000, seed=0))
    for name in tasks.IN_CONTEXT:
        test = tasks.instances(name, 40, split="test")
        assert len(test) == 40
        for r in test:
            answer = r["completion"]
            if name == "affix":
                answer = answer[len(r["prompt"]) :]  # the held-out part is the suffix
            assert f" {answer}\n" not in text and f" {answer};" not in text and not text.endswith(answer)


def test_answer_exists_only_in_the_prompt():
    for name in tasks.IN_CONTEXT:
        r = tasks.sample(name, random.Random(3), "test")
        assert r["choices"][r["answer"]] == r["completion"]
        assert len(r["examples"]) == tasks.IN_CONTEXT_EXAMPLES
        # zero-shot the prompt is the bare query: the made-up part of the answer is nowhere in it
        zero_shot = build_prompt(r["prompt"], own_examples(r, 0, random.Random(0)))
        assert zero_shot == f"{r['prompt']} =>" and r["completion"] != r["prompt"]
        # every k >= 1 prompt holds what the answer needs: the query's own pair (lexicon), or the suffix
        for k in (1, 2, 4):
            shown = own_examples(r, k, random.Random(k))
            assert len(shown) == k
            prompt = build_prompt(r["prompt"], shown)
            if name == "lexicon":
                assert f"{r['prompt']} => {r['completion']}" in prompt
            else:
                suffix = r["completion"][len(r["prompt"]) :]
                assert all(y == x + suffix for x, y in shown) and r["prompt"] not in {x for x, _ in shown}


def test_lexicons_are_fresh_per_prompt_and_documents_teach_copying():
    a, b = (tasks.sample("lexicon", random.Random(s), "test") for s in (1, 2))
    assert dict(map(tuple, a["examples"])) != dict(map(tuple, b["examples"]))
    docs = [d for d in tasks.training_documents(400, seed=1, tasks="lexicon")]
    inline = [d for d in docs if "; " in d and " = " in d]
    assert inline and len(inline) < len(docs)  # both prompt styles: "x => y" lines and "x = y; x = y"
    repeats = 0
    for d in docs:
        lines = [ln for ln in d.replace("; ", "\n").split("\n") if "=" in ln]
        repeats += len(lines) - len(set(lines))
    assert repeats > len(docs) // 2  # later lines repeat earlier pairs: the answer is in the context


def test_compare_is_a_two_class_task():
    r = tasks.sample("compare", random.Random(0), "test")
    a, _, b = r["prompt"].split()
    assert r["completion"] == ("more" if int(a) > int(b) else "less") and sorted(r["choices"]) == ["less", "more"]
    assert tasks.resolve("incontext") == ["lexicon", "affix"] and "lexicon" in tasks.resolve("all")
