"""``python -m multimodal.gpt.fewshot --checkpoint PATH --tasks add2,translate --shots 0,1,4``: zero-, one- and
few-shot evaluation of a GPT, with no gradient update (GPT-3, Brown et al. 2020).

A prompt is an optional task description, ``k`` solved examples and the query, one per line (``--style
lines``, GPT-3's format), or inline on one line (``--style inline``, the seed's ``sky = ciel; dog = chien; cat =
chat; children =``)::

    Translate English to French.
    cheese => fromage
    sea otter =>

Tasks are the built-in synthetic ones of ``data.tasks`` (held-out instances, examples drawn from the
training side) or JSONL files whose records are either ``{"context", "choices", "answer"}`` (multiple
choice: the choice with the highest length-normalised log-likelihood wins) or ``{"prompt", "completion"}``
(greedy decoding up to a newline must give the completion exactly). A JSONL file's examples are its other
records (with the same ``group`` when records have one).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from data import tasks as builtin
from data import text as data_text
from data.tasks import SEPARATOR, format_example
from multimodal.checkpoint import CheckpointError
from multimodal.cli import UsageError, add_device_flag, add_precision_flag, fail
from multimodal.generation import SCORING_START, Completion, prompt_ids
from multimodal.gpt.model import load_cli_models
from multimodal.sampling import SamplingSettings

# -- prompts ----------------------------------------------------------------------------------------------


STYLES = ("lines", "inline")


def build_prompt(
    query: str,
    examples: Sequence[tuple[str, str]] = (),
    description: str | None = None,
    sep: str = SEPARATOR,
    style: str = "lines",
) -> str:
    """``description`` line, then ``lines``: one ``input => output`` line per example and ``query =>``;
    ``inline``: ``x = y; `` per example and ``query =``. No trailing space: the answer is scored or generated
    as `` answer``."""
    head = [description] if description else []
    if style == "inline":
        return "\n".join([*head, "".join(f"{x} = {y}; " for x, y in examples) + f"{query} ="])
    if style != "lines":
        raise ValueError(f"unknown prompt style {style!r} ({', '.join(STYLES)})")
    lines = [*head, *(format_example(x, y, sep) for x, y in examples), f"{query}{sep}"]
    return "\n".join(lines)


def io_of(record: dict, metric: str) -> tuple[str, str]:
    """(input, correct output) of a record under ``metric`` (``choice`` or ``exact``)."""
    if metric == "choice":
        return record["context"], record["choices"][record["answer"]]
    return record["prompt"], record["completion"]


def record_metric(record: dict, metric: str) -> str:
    if metric != "auto":
        return metric
    return "exact" if "completion" in record else "choice"


# -- tasks ------------------------------------------------------------------------------------------------


class TaskError(ValueError):
    """A task file or name that cannot be used; the message is one line for the user."""


def _check_record(r: object, where: str) -> dict:
    if not isinstance(r, dict):
        raise TaskError(f"{where}: expected a JSON object")
    has_choice = {"context", "choices", "answer"} <= r.keys()
    has_exact = {"prompt", "completion"} <= r.keys()
    if not (has_choice or has_exact):
        raise TaskError(f"{where}: a record needs context+choices+answer or prompt+completion")
    if has_choice:
        ch, a = r["choices"], r["answer"]
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c for c in ch):
            raise TaskError(f"{where}: choices must be a list of at least 2 non-empty strings")
        if isinstance(a, str) and a in ch:
            r["answer"] = ch.index(a)
        elif not isinstance(a, int) or not 0 <= a < len(ch):
            raise TaskError(f"{where}: answer must be an index into choices (or one of them)")
    return r


def read_jsonl(path: str | Path) -> list[dict]:
    try:
        records = [_check_record(obj, where) for where, obj in data_text.read_jsonl(path)]
    except ValueError as e:
        raise TaskError(str(e)) from None
    if not records:
        raise TaskError(f"{path}: no records")
    return records


def load_tasks(spec: str, n: int | None, seed: int = 0) -> dict[str, tuple[list[dict], list[dict]]]:
    """``spec``: comma-separated built-in names (``add2``, ``words``, ``all``…) and/or ``.jsonl`` paths →
    ``{task: (queries, example pool)}``. Built-ins draw ``n`` held-out queries (default 100) and a pool of
    training instances; a JSONL file is its own pool (a query never serves as its own example), every record
    scored unless ``n`` caps it."""
    out: dict[str, tuple[list[dict], list[dict]]] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.endswith(".jsonl") or Path(part).exists():
            records = read_jsonl(part)
            out[Path(part).stem] = (records[:n] if n else records, records)
            continue
        try:
            names = builtin.resolve(part)
        except ValueError as e:
            raise TaskError(str(e)) from None
        for name in names:
            pool = [] if name in builtin.IN_CONTEXT else builtin.instances(name, 300, seed, "train")
            out[name] = (builtin.instances(name, n or 100, seed, "test"), pool)
    if not out:
        raise TaskError("no task given")
    return out


def pick_examples(pool: list[dict], query: dict, k: int, rng: random.Random) -> list[dict]:
    """Up to ``k`` examples from ``pool``: same ``group`` as the query, never the query itself."""
    group = query.get("group")
    cands = [r for r in pool if r is not query and r.get("group") == group and r != query]
    return rng.sample(cands, min(k, len(cands)))


def own_examples(record: dict, k: int, rng: random.Random) -> list[tuple[str, str]]:
    """A record that carries its own ``examples`` (the in-context tasks: the first is the one its answer
    needs) shows its first ``k`` of them in random order; ``[]`` for other records."""
    shown = [(str(x), str(y)) for x, y in record.get("examples", [])[:k]]
    rng.shuffle(shown)
    return shown


# -- scoring ----------------------------------------------------------------------------------------------


def _prompt_ids(tok, prompt: str, room: int) -> tuple[list[int], bool]:
    """End-of-text (the document boundary of pre-training) + the prompt, cut from the left to ``room``."""
    read = prompt_ids(tok, prompt, SCORING_START, max(room, 1))
    return read.ids, read.shortened


@torch.no_grad()
def choice_logprobs(
    model, prompt_ids: list[list[int]], choice_ids: list[list[int]], batch_size: int = 16
) -> list[Tensor]:
    """Log-probabilities of each choice's tokens after its prompt, batched: sequence ``i`` is
    ``prompt_ids[i] + choice_ids[i]`` (right-padded; causal attention keeps the padding out)."""
    device = model.token_embedding.weight.device
    pad = model.tokenizer.eot_id if model.tokenizer is not None else 0
    out: list[Tensor] = []
    for s in range(0, len(prompt_ids), batch_size):
        rows = [p + c for p, c in zip(prompt_ids[s : s + batch_size], choice_ids[s : s + batch_size])]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        lp = model.token_logprobs(ids.to(device)).cpu()  # [B, T-1]; lp[:, t-1] scores ids[:, t]
        for i, (p, c) in enumerate(zip(prompt_ids[s : s + batch_size], choice_ids[s : s + batch_size])):
            out.append(lp[i, len(p) - 1 : len(p) - 1 + len(c)])
    return out


def normalise(lp: Tensor, text: str, norm: str) -> float:
    """``token``: mean log-prob per token (GPT-3's length normalisation), ``char`` per character, ``none``."""
    total = float(lp.sum())
    if norm == "token":
        return total / max(len(lp), 1)
    if norm == "char":
        return total / max(len(text), 1)
    return total


def greedy_completion(
    model, prompt_ids: list[int], max_new_tokens: int, stops: Sequence[str] = ("\n",), logprobs: int | None = None
) -> Completion:
    """Greedy, KV-cached continuation (``GPT.complete``) up to the first of ``stops`` (or end-of-text), the stop
    excluded. Lines of examples end at a newline; inline examples (``x = y; q =``) also at ``;``."""
    return model.complete(prompt_ids, max_new_tokens, SamplingSettings(0.0), stops, logprobs=logprobs)


def greedy(model, prompt_ids: list[int], max_new_tokens: int, stops: Sequence[str] = ("\n",)) -> str:
    """``greedy_completion``'s text."""
    return greedy_completion(model, prompt_ids, max_new_tokens, stops).text


STOPS = {"lines": ("\n",), "inline": ("\n", ";")}


def evaluate(
    model,
    task_sets: dict[str, tuple[list[dict], list[dict]]],
    shots: Sequence[int],
    metric: str = "auto",
    describe: bool = False,
    description: str | None = None,
    norm: str = "token",
    seed: int = 0,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
    style: str = "lines",
) -> dict:
    """Accuracy per task and per k: ``{"results": {task: {k: acc}}, "correct": {task: {k: right answers}},
    "n": {task: n}, "cut": prompts cut}``. ``style``: the prompt format (``build_prompt``)."""
    tok = model.tokenizer
    n_ctx = model.config.context_length
    results: dict[str, dict[int, float]] = {}
    right: dict[str, dict[int, int]] = {}
    counts: dict[str, int] = {}
    cut = 0
    total = sum(len(q) for q, _ in task_sets.values()) * len(shots)
    bar = tqdm(total=total, desc="few-shot", disable=not progress, file=sys.stderr)
    for name, (queries, pool) in task_sets.items():
        counts[name] = len(queries)
        # the same examples for every k (k=1 uses the first of the k=4 ones): only k changes between columns
        drawn = [pick_examples(pool, q, max(shots), random.Random(f"{seed}:{name}:{i}")) for i, q in enumerate(queries)]
        for k in shots:
            correct = 0
            mc_prompts, mc_choices, mc_texts, mc_owner = [], [], [], []
            for i, (q, ex) in enumerate(zip(queries, drawn)):
                m = record_metric(q, metric)
                desc = description or (q.get("description") if describe else None)
                x, y = io_of(q, m)
                examples = own_examples(q, k, random.Random(f"{seed}:{name}:{i}:{k}")) or [io_of(e, m) for e in ex[:k]]
                if m == "exact":
                    target = tok.encode(" " + y)
                    budget = min(max_tokens or len(target) + 1, n_ctx - 1)
                    ids, was_cut = _fit(tok, x, examples, desc, n_ctx - budget + 1, style)
                    cut += was_cut
                    correct += greedy(model, ids, budget, STOPS[style]).strip() == y.strip()
                    bar.update(1)
                else:
                    choices = q["choices"]
                    longest = max(len(tok.encode(" " + c)) for c in choices)
                    ids, was_cut = _fit(tok, x, examples, desc, n_ctx - longest + 1, style)
                    cut += was_cut
                    for c in choices:
                        mc_prompts.append(ids)
                        mc_choices.append(tok.encode(" " + c))
                        mc_texts.append(c)
                    mc_owner.append((q, len(choices)))
            if mc_owner:
                lps = choice_logprobs(model, mc_prompts, mc_choices, batch_size)
                j = 0
                for q, n_choices in mc_owner:
                    scores = [normalise(lps[j + c], mc_texts[j + c], norm) for c in range(n_choices)]
                    correct += max(range(n_choices), key=scores.__getitem__) == q["answer"]
                    j += n_choices
                    bar.update(1)
            results.setdefault(name, {})[k] = correct / max(len(queries), 1)
            right.setdefault(name, {})[k] = int(correct)
    bar.close()
    return {"results": results, "correct": right, "n": counts, "cut": cut}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for z = 1.96): unlike p ± z·se it stays inside
    [0, 1] and is not empty at 0 / n or n / n."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_accuracy(report: dict, k: int) -> float:
    """Accuracy at ``k`` averaged over the report's tasks (each task weighs the same)."""
    accs = [a[k] for a in report["results"].values()]
    return sum(accs) / max(len(accs), 1)


def mean_interval(report: dict, k: int) -> tuple[float, float]:
    """Wilson interval of the pooled answers at ``k`` (all tasks' queries together)."""
    return wilson(sum(c[k] for c in report["correct"].values()), sum(report["n"].values()))


def _fit(
    tok, x: str, examples: list[tuple[str, str]], desc: str | None, room: int, style: str = "lines"
) -> tuple[list[int], bool]:
    """Prompt ids that fit ``room`` tokens: drop the oldest examples first, then cut from the left."""
    examples = list(examples)
    while True:
        ids, was_cut = _prompt_ids(tok, build_prompt(x, examples, desc, style=style), room)
        if not was_cut or not examples:
            return ids, was_cut
        examples.pop(0)


# -- CLI --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m multimodal.gpt.fewshot", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--checkpoint",
        action="append",
        default=None,
        help="export directory, Lightning .ckpt, or HF GPT-2 directory; repeat it to compare models (sizes) "
        "(default: the packaged GPT)",
    )
    p.add_argument(
        "--tasks",
        default="all",
        help="comma-separated built-in tasks (add2 add3 sub2 sub3 cycle anagram reverse translate compare lexicon "
        "affix french spanish german; groups arithmetic, words, incontext, dictionary, all) and/or JSONL files "
        "(default all)",
    )
    p.add_argument("--shots", default="0,1,4", help="comma-separated numbers of examples k (default 0,1,4)")
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help="queries per built-in task (default 100); caps a JSONL file when given (default: every record)",
    )
    p.add_argument(
        "--metric",
        choices=["auto", "choice", "exact"],
        default="auto",
        help="choice: log-likelihood of each choice; exact: greedy exact match; auto: exact when a record has "
        "a completion (default)",
    )
    p.add_argument(
        "--norm",
        choices=["token", "char", "none"],
        default="token",
        help="choice length normalisation: token (GPT-3's, default), char (lm-eval's acc_norm), none (lm-eval's acc)",
    )
    p.add_argument(
        "--style",
        choices=STYLES,
        default="lines",
        help="prompt format: lines ('x => y' per line, default) or inline ('x = y; ... q =', one line)",
    )
    p.add_argument("--describe", action="store_true", help="start prompts with each task's own description")
    p.add_argument("--description", default=None, help="start every prompt with this description")
    p.add_argument("--max-tokens", type=int, default=None, help="exact match: new tokens at most (default answer+1)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward when scoring choices")
    p.add_argument("--seed", type=int, default=0, help="seed for queries and examples")
    add_device_flag(p)
    add_precision_flag(p)
    p.add_argument(
        "--plot",
        default=None,
        help="write a PNG of accuracy against k here (one line per model, or per task with one model)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per checkpoint with the accuracies and their 95%% Wilson intervals",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise TaskError(f"--shots must be comma-separated integers, got {text!r}") from None
    if not shots or any(k < 0 for k in shots):
        raise TaskError(f"--shots must be non-negative integers, got {text!r}")
    return list(dict.fromkeys(shots))


def format_table(report: dict, shots: Sequence[int], title: str | None = None) -> str:
    """Accuracy per task and k with its 95 % Wilson interval; a mean row when there are several tasks."""
    width = max([len(t) for t in report["results"]] + [4])

    def cell(acc: float, lo: float, hi: float) -> str:
        return f"{acc:.3f} [{lo:.2f},{hi:.2f}]"

    lines = [title] if title else []
    lines.append(f"{'task':<{width}}  {'n':>4}  " + "  ".join(f"{f'k={k}':<18}" for k in shots))
    for task, accs in report["results"].items():
        n = report["n"][task]
        cells = [cell(accs[k], *wilson(report["correct"][task][k], n)) for k in shots]
        lines.append(f"{task:<{width}}  {n:>4}  " + "  ".join(f"{c:<18}" for c in cells))
    if len(report["results"]) > 1:
        cells = [cell(mean_accuracy(report, k), *mean_interval(report, k)) for k in shots]
        lines.append(f"{'mean':<{width}}  {'':>4}  " + "  ".join(f"{c:<18}" for c in cells))
    lines.append("(exact match or choice accuracy, [95% Wilson interval])")
    return "\n".join(lines)


# Series colours, markers and dash patterns (on, off in px; () = solid) of the accuracy charts, in order.
PALETTE = [(40, 90, 180), (200, 60, 60), (40, 150, 70), (150, 80, 170), (220, 140, 30), (30, 160, 170)]
MARKERS = ["circle", "square", "triangle", "diamond"]
DASHES = [(), (12, 6), (4, 4), (14, 4, 3, 4)]
SERIES_GAP = 4  # px between series drawn at the same value, so that no line hides another


def _dashed(d, pts: list[tuple[float, float]], dash: tuple[int, ...], fill, width: int) -> None:
    """A polyline with a dash pattern (Pillow draws only solid lines); the pattern runs on across vertices."""
    if not dash:
        d.line(pts, fill=fill, width=width, joint="curve")
        return
    pos, on = 0.0, 0  # distance into the pattern; index of the current segment of it
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        length, t = math.hypot(x1 - x0, y1 - y0), 0.0
        while t < length:
            step = min(dash[on] - pos, length - t)
            if on % 2 == 0:
                a, b = t / length, (t + step) / length
                d.line([x0 + (x1 - x0) * a, y0 + (y1 - y0) * a, x0 + (x1 - x0) * b, y0 + (y1 - y0) * b], fill, width)
            t, pos = t + step, pos + step
            if pos >= dash[on]:
                on, pos = (on + 1) % len(dash), 0.0


def _marker(d, x: float, y: float, kind: str, fill, r: float = 5) -> None:
    if kind == "square":
        d.rectangle([x - r + 1, y - r + 1, x + r - 1, y + r - 1], fill=fill)
    elif kind == "triangle":
        d.polygon([(x, y - r - 1), (x - r, y + r - 1), (x + r, y + r - 1)], fill=fill)
    elif kind == "diamond":
        d.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=fill)
    else:
        d.ellipse([x - r + 1, y - r + 1, x + r - 1, y + r - 1], fill=fill)


def plot_accuracy(curves: dict[str, dict[int, float]], path: str | Path, title: str) -> Path:
    """Accuracy against k (one line per curve: a model size or a task), drawn with Pillow.

    Curves often coincide (every task at 0% for k = 0): each has its own colour, marker and dash pattern and is
    drawn ``SERIES_GAP`` px apart from the others (up and right by its index), so every line stays visible."""
    from PIL import Image, ImageDraw

    from multimodal.images import font, save_png

    W, H, left, right, top, bottom = 760, 480, 70, 210, 50, 60
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    f, small = font(16), font(14)
    ks = sorted({k for c in curves.values() for k in c})
    x_hi = max(max(ks), 1)

    def px(k: float, acc: float) -> tuple[float, float]:
        return left + k / x_hi * (W - left - right), top + (1 - acc) * (H - top - bottom)

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for i in range(6):
        _, y = px(0, i / 5)
        d.line([left, y, W - right, y], fill=(225, 225, 225))
        d.text((left - 48, y - 8), f"{20 * i}%", fill="black", font=small)
    for k in ks:
        x, _ = px(k, 0)
        d.line([x, H - bottom, x, H - bottom + 5], fill="black")
        d.text((x - 4, H - bottom + 8), str(k), fill="black", font=small)
    for i, (name, curve) in enumerate(curves.items()):
        colour, marker, dash = PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)], DASHES[i % len(DASHES)]
        shift = i * SERIES_GAP  # up and right: the first curve sits on its values, none below the axis
        pts = [(x + shift, y - shift) for x, y in (px(k, curve[k]) for k in sorted(curve))]
        if len(pts) > 1:
            _dashed(d, pts, dash, colour, 3)
        for x, y in pts:
            _marker(d, x, y, marker, colour)
        ly = top + 10 + 24 * i
        _dashed(d, [(W - right + 12, ly + 9), (W - right + 52, ly + 9)], dash, colour, 3)
        _marker(d, W - right + 32, ly + 9, marker, colour)
        d.text((W - right + 58, ly), name[:20], fill="black", font=small)
    d.text((left, 16), title, fill="black", font=f)
    d.text((left + (W - left - right) // 2 - 100, H - 32), "examples in the prompt (k)", fill="black", font=f)
    return save_png(img, path)


def model_label(checkpoint: str, model) -> str:
    """How a model is named in tables and plots: its size (non-embedding parameters) and its directory."""
    n = model.num_params()
    size = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
    return f"{size} {Path(checkpoint).name or checkpoint}"


def json_record(checkpoint: str, model, report: dict, shots: Sequence[int], args) -> dict:
    def interval(task: str, k: int) -> list[float]:
        return [round(v, 4) for v in wilson(report["correct"][task][k], report["n"][task])]

    return {
        "checkpoint": str(checkpoint),
        "params": model.num_params(),
        "metric": args.metric,
        "describe": bool(args.describe or args.description),
        "style": args.style,
        "shots": list(shots),
        "n": report["n"],
        "accuracy": {t: {str(k): a for k, a in accs.items()} for t, accs in report["results"].items()},
        "interval95": {t: {str(k): interval(t, k) for k in shots} for t in report["results"]},
        "mean": {str(k): mean_accuracy(report, k) for k in shots},
        "mean_interval95": {str(k): [round(v, 4) for v in mean_interval(report, k)] for k in shots},
        "prompts_cut": report["cut"],
        "conventions": {
            "document_start": "end-of-text token before every prompt (lm-eval: model_args add_bos_token=True)",
            "norm": args.norm,
            "normalisation": {
                "token": "mean log-prob per choice token (GPT-3)",
                "char": "log-prob / characters of the choice (lm-eval acc_norm)",
                "none": "summed log-prob (lm-eval acc)",
            }[args.norm],
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.n is not None and args.n < 0:
        return fail("--n must be >= 0")
    if args.batch_size < 1:
        return fail("--batch-size must be at least 1")
    if args.max_tokens is not None and args.max_tokens < 1:
        return fail("--max-tokens must be at least 1")
    if args.plot is not None and not Path(args.plot).resolve().parent.is_dir():
        return fail(f"--plot {args.plot}: its directory does not exist")
    try:
        shots = parse_shots(args.shots)
        task_sets = load_tasks(args.tasks, args.n, args.seed)
    except TaskError as e:
        return fail(str(e))
    try:
        models = load_cli_models(args.checkpoint or [None], args.device, args.precision)
    except (UsageError, CheckpointError) as e:
        return fail(e)
    reports = []
    for checkpoint, model in models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.inference_mode():
                report = evaluate(
                    model,
                    task_sets,
                    shots,
                    args.metric,
                    args.describe,
                    args.description,
                    args.norm,
                    args.seed,
                    args.batch_size,
                    args.max_tokens,
                    progress=not args.no_progress,
                    style=args.style,
                )
        if report["cut"]:
            print(
                f"warning: {checkpoint}: {report['cut']} prompts did not fit the context and lost examples",
                file=sys.stderr,
            )
        reports.append((checkpoint, model, report))
        if args.json:
            print(json.dumps(json_record(checkpoint, model, report, shots, args)), flush=True)
        else:
            title = model_label(checkpoint, model) if len(models) > 1 else None
            print(format_table(report, shots, title) + ("\n" if len(models) > 1 else ""), flush=True)
    if args.plot is not None:
        if len(reports) > 1:  # one line per model: the mean over tasks
            curves = {model_label(c, m): {k: mean_accuracy(r, k) for k in shots} for c, m, r in reports}
        else:
            curves = dict(reports[0][2]["results"])
            if len(curves) > 1:
                curves["mean"] = {k: mean_accuracy(reports[0][2], k) for k in shots}
        title = f"few-shot accuracy vs k: {', '.join(task_sets)}"
        png = plot_accuracy(curves, args.plot, title[:90])
        print(f"wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
