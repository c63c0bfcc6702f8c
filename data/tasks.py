"""The GPT-3 paper's synthetic tasks (Brown et al. 2020, §3.9), generated on the fly.

- arithmetic: 2- and 3-digit addition and subtraction (``48 + 76 => 124``, ``12 - 30 => -18``);
- word unscrambling: cycled letters (``pleap => apple``), anagrams keeping the first and last letter
  (``aplpe => apple``) and reversed words (``elppa => apple``);
- "translation" of English adjective + noun phrases into one of two made-up languages with fixed
  dictionaries: Florp keeps the English order, Zib puts the noun first (as ``sea otter => loutre de mer``
  reorders). Which language a query wants is not visible in the query itself: the task description or
  one example in the prompt tells it, which is what few-shot prompting is for.
- in-context tasks whose answer exists only in the prompt (``IN_CONTEXT``), drawn fresh for every prompt:
  ``lexicon`` asks a word of a made-up lexicon the prompt defines (``sky => ciel`` … ``sky =>``: the query
  is one of the prompt's pairs), ``affix`` a made-up suffix the examples add to every word
  (``dog => dogzu``, ``cat => catzu``, ``tree =>`` ``treezu``). With no example (k = 0) neither answer
  can be known; their made-up words are split train / held out by hash, so a held-out answer never
  occurs in any training document. Their records carry their own ``examples`` (the first is the one the
  answer needs).
- ``compare``: a 2-class task (``37 vs 52 => less``) for few-shot vs fine-tuning.
- real word translation, English into ``french``, ``spanish`` and ``german`` (group ``dictionary``), from the
  checked word list ``data/words.tsv``. Pre-training states every word's translations as facts in prose
  (``knowledge_document``: dictionary entries, ``the French for dog is chien``), and shows the prompt format
  (``sky = ciel; dog = chien``, ``dog => chien``) only for words outside ``HELD_OUT_WORDS`` (``children`` among
  them): on a held-out word the model must bring a fact it read in prose to a format it saw only with other
  words, and k = 0 is ambiguous between the three languages (the examples pick the task).

Every instance is either *train* or *held out* by a fixed hash of what it asks (``split``), so a model
trained on ``training_documents`` never saw the held-out instances ``sample(..., split="test")`` draws.
Records carry both scoring forms: ``{"prompt", "completion"}`` (greedy exact match) and
``{"context", "choices", "answer"}`` (multiple choice), plus ``task``, ``group`` (examples in a prompt must
share it: the translation's language) and ``description``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass

# Words for the unscrambling tasks: 5 to 8 letters so an anagram with fixed ends can differ from the word.
WORDS = """apple beach bread chair cloud dance dream earth field flame fruit glass grape green heart horse
house juice knife lemon light money mouse music night ocean paper party piano plant queen river robot salad
sheep shirt smile snake stone storm sugar table tiger toast tooth train water whale world yellow zebra
animal basket bottle bridge butter candle carpet castle cheese circle dinner doctor dragon flower forest
garden guitar hammer island jacket kitten ladder letter market monkey orange pencil pepper pillow planet
rabbit rocket school silver spider spring summer tomato turtle window winter almond balloon blanket brother
chicken cabinet diamond dolphin feather giraffe kitchen lantern morning octopus pumpkin rainbow sandwich
elephant mountain notebook umbrella""".split()

ADJECTIVES = "red blue green small big old new happy sad fast slow hot cold soft loud dark".split()
NOUNS = "cat dog bird fish tree house car boat book cup hat shoe moon star king girl".split()


def _made_up_words(n: int, seed: int) -> list[str]:
    """``n`` distinct pronounceable nonsense words (consonant-vowel syllables), fixed by ``seed``."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.choice((2, 2, 3))))
        if rng.random() < 0.5:
            w += rng.choice("nrst")
        if w not in out:
            out.append(w)
    return out


@dataclass(frozen=True)
class Language:
    name: str
    words: dict[str, str]  # English word -> made-up word
    noun_first: bool

    def translate(self, adjective: str, noun: str) -> str:
        a, n = self.words[adjective], self.words[noun]
        return f"{n} {a}" if self.noun_first else f"{a} {n}"


def _language(name: str, seed: int, noun_first: bool) -> Language:
    english = ADJECTIVES + NOUNS
    return Language(name, dict(zip(english, _made_up_words(len(english), seed))), noun_first)


LANGUAGES = {"florp": _language("Florp", 1, False), "zib": _language("Zib", 2, True)}

HELD_OUT_FRACTION = 0.15


def held_out(key: str, fraction: float = HELD_OUT_FRACTION) -> bool:
    """Is the instance named ``key`` held out of training? A fixed hash (same in every process)."""
    return zlib.crc32(key.encode()) % 10_000 < fraction * 10_000


# -- instance generators: rng, group -> (key, input, output, distractors, group, description) --------------
Instance = tuple[str, str, str, list[str], str, str]


def _arithmetic(digits: int, op: str) -> Callable[[random.Random, str | None], Instance]:
    word = "Add" if op == "+" else "Subtract"

    def make(rng: random.Random, group: str | None) -> Instance:
        a, b = rng.randrange(10**digits), rng.randrange(10**digits)
        ans = a + b if op == "+" else a - b
        near = [ans + d for d in (1, -1, 2, -2, 10, -10, 100, -100)]
        rng.shuffle(near)
        desc = f"{word} the {digits}-digit numbers." if op == "+" else f"{word} the second number from the first."
        return f"{digits}{op}{a},{b}", f"{a} {op} {b}", str(ans), [str(x) for x in near[:3]], "", desc

    return make


def _scramble(kind: str) -> Callable[[random.Random, str | None], Instance]:
    descriptions = {
        "cycle": "Unscramble the word: its letters were rotated.",
        "anagram": "Unscramble the word: its middle letters were shuffled.",
        "reverse": "Unscramble the word: it was written backwards.",
    }

    def make(rng: random.Random, group: str | None) -> Instance:
        while True:
            word = rng.choice(WORDS)
            if kind == "reverse":
                scrambled = word[::-1]
            elif kind == "cycle":
                k = rng.randrange(1, len(word))
                scrambled = word[k:] + word[:k]
            else:
                mid = list(word[1:-1])
                rng.shuffle(mid)
                scrambled = word[0] + "".join(mid) + word[-1]
            if scrambled != word:
                break
        others = rng.sample([w for w in WORDS if w != word and len(w) == len(word)], 2)
        return f"{kind}:{scrambled}>{word}", scrambled, word, [scrambled, *others], "", descriptions[kind]

    return make


def _translate(rng: random.Random, group: str | None) -> Instance:
    lang_id = group or rng.choice(sorted(LANGUAGES))
    lang = LANGUAGES[lang_id]
    other = LANGUAGES[next(k for k in sorted(LANGUAGES) if k != lang_id)]
    adj, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
    wrong_noun = rng.choice([n for n in NOUNS if n != noun])
    wrong_adj = rng.choice([a for a in ADJECTIVES if a != adj])
    distractors = [other.translate(adj, noun), lang.translate(adj, wrong_noun), lang.translate(wrong_adj, noun)]
    key = f"translate:{lang_id}:{adj} {noun}"
    return key, f"{adj} {noun}", lang.translate(adj, noun), distractors, lang_id, f"Translate English to {lang.name}."


# -- in-context tasks: the made-up words of a prompt are drawn fresh for it ---------------------------------
CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"
LEXICON_WORDS = sorted(set(WORDS[:60] + ADJECTIVES + NOUNS + "sky sun tea egg ice car pen sea rain snow".split()))


def fresh_word(rng: random.Random, split: str, syllables: tuple[int, ...] = (2, 2, 3)) -> str:
    """A pronounceable nonsense word from ``split``'s side of a fixed hash: a held-out (``test``) word
    never appears in a training document."""
    while True:
        w = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice(syllables)))
        if held_out("word:" + w) == (split == "test"):
            return w


def fresh_affix(rng: random.Random, split: str) -> str:
    while True:
        a = rng.choice(CONSONANTS) + rng.choice(VOWELS) + (rng.choice("nrst") if rng.random() < 0.5 else "")
        if held_out("affix:" + a) == (split == "test"):
            return a


def lexicon_pairs(rng: random.Random, split: str, n: int) -> list[tuple[str, str]]:
    """``n`` pairs (English word, made-up word) of a lexicon drawn fresh: distinct words on both sides."""
    english = rng.sample(LEXICON_WORDS, n)
    made_up: list[str] = []
    while len(made_up) < n:
        w = fresh_word(rng, split)
        if w not in made_up:
            made_up.append(w)
    return list(zip(english, made_up))


IN_CONTEXT_EXAMPLES = 8  # examples an in-context record carries (k above it shows them all)


def _lexicon(rng: random.Random, split: str) -> dict:
    pairs = lexicon_pairs(rng, split, IN_CONTEXT_EXAMPLES)
    x, y = pairs[0]
    wrong = [p[1] for p in pairs[1:4]]
    return {
        "key": f"lexicon:{y}",
        "prompt": x,
        "completion": y,
        "distractors": wrong,
        "examples": [list(p) for p in pairs],
        "description": "Translate into the made-up language of the examples.",
    }


def _affix(rng: random.Random, split: str) -> dict:
    affix = fresh_affix(rng, split)
    words = rng.sample(WORDS, IN_CONTEXT_EXAMPLES + 1)
    query, shown = words[0], words[1:]
    others = [query + fresh_affix(rng, split) for _ in range(2)]
    return {
        "key": f"affix:{affix}",
        "prompt": query,
        "completion": query + affix,
        "distractors": [query, *others],
        "examples": [[w, w + affix] for w in shown],
        "description": "Add the ending the examples add.",
    }


IN_CONTEXT: dict[str, Callable[[random.Random, str], dict]] = {"lexicon": _lexicon, "affix": _affix}


def _compare(rng: random.Random, group: str | None) -> Instance:
    while True:
        a, b = rng.randrange(100), rng.randrange(100)
        if a != b:
            break
    ans = "more" if a > b else "less"
    other = "less" if ans == "more" else "more"
    return f"compare:{a},{b}", f"{a} vs {b}", ans, [other], "", "Is the first number more or less?"


# -- real translation: facts read in prose, asked in the prompt format -------------------------------------
REAL_LANGUAGES = {"french": "French", "spanish": "Spanish", "german": "German"}


def _read_words() -> dict[str, dict[str, str]]:
    """``data/words.tsv``: English word → {language: translation} (one tab-separated row per word)."""
    from pathlib import Path

    out: dict[str, dict[str, str]] = {}
    for line in (Path(__file__).with_name("words.tsv")).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            english, *translations = line.split("\t")
            out[english] = dict(zip(REAL_LANGUAGES, translations))
    return out


REAL_WORDS = _read_words()


def _english_in_other_tasks() -> set[str]:
    """English words that other tasks write on the left of ``=`` or ``=>`` (keys of made-up lexicons, affix
    stems, unscrambled words, Florp/Zib phrases): a held-out word must not be one of them."""
    return set(WORDS) | set(ADJECTIVES) | set(NOUNS) | set(LEXICON_WORDS)


# ``children`` (the seed's query) is held out by name, the rest by a fixed hash
HELD_OUT_WORDS = frozenset(
    w for w in REAL_WORDS if w == "children" or (held_out("lexeme:" + w, 0.2) and w not in _english_in_other_tasks())
)


def _real(language: str) -> Callable[[random.Random, str | None], Instance]:
    def make(rng: random.Random, group: str | None) -> Instance:
        english = rng.choice(sorted(REAL_WORDS))
        row = REAL_WORDS[english]
        others = [row[lang] for lang in REAL_LANGUAGES if lang != language and row[lang] != row[language]]
        wrong = REAL_WORDS[rng.choice([w for w in sorted(REAL_WORDS) if w != english])][language]
        desc = f"Translate English to {REAL_LANGUAGES[language]}."
        return f"{language}:{english}", english, row[language], [*others, wrong], language, desc

    return make


KNOWLEDGE_TEMPLATES = (
    "The {L} for {e} is {t}.",
    "In {L}, {e} is {t}.",
    "{t} is the {L} word for {e}.",
    "The {L} word {t} means {e}.",
    "How do you say {e} in {L}? You say {t}.",
    "{e} is {t} in {L}.",
)


def knowledge_document(rng: random.Random, sentences: int = 4) -> str:
    """Facts about random words in prose: a dictionary entry (``dog (English): French chien, ...``) or
    sentences from ``KNOWLEDGE_TEMPLATES``, never the ``x = y`` / ``x => y`` prompt format. Every word of
    ``data/words.tsv``, held out or not, is written this way."""
    words = sorted(REAL_WORDS)
    out = []
    for _ in range(sentences):
        e = rng.choice(words)
        langs = list(REAL_LANGUAGES)
        rng.shuffle(langs)
        if rng.random() < 0.25:
            parts = ", ".join(f"{REAL_LANGUAGES[lang]} {REAL_WORDS[e][lang]}" for lang in langs)
            out.append(f"{e} (English): {parts}.")
        else:
            lang = langs[0]
            sentence = rng.choice(KNOWLEDGE_TEMPLATES).format(L=REAL_LANGUAGES[lang], e=e, t=REAL_WORDS[e][lang])
            out.append(sentence)  # lower-case like the prompts: "dog", not "Dog", is the word asked
    return " ".join(out)


TASKS: dict[str, Callable[[random.Random, str | None], Instance]] = {
    "add2": _arithmetic(2, "+"),
    "add3": _arithmetic(3, "+"),
    "sub2": _arithmetic(2, "-"),
    "sub3": _arithmetic(3, "-"),
    "cycle": _scramble("cycle"),
    "anagram": _scramble("anagram"),
    "reverse": _scramble("reverse"),
    "translate": _translate,
    "compare": _compare,
    **{lang: _real(lang) for lang in REAL_LANGUAGES},
}
GROUPS = {
    "arithmetic": ["add2", "add3", "sub2", "sub3"],
    "words": ["cycle", "anagram", "reverse"],
    "incontext": list(IN_CONTEXT),
    "dictionary": list(REAL_LANGUAGES),
}
ALL_TASKS = [*TASKS, *IN_CONTEXT]


def resolve(names: str) -> list[str]:
    """``"add2,words"`` → task names; ``all`` is every task. Raises ``ValueError`` on an unknown name."""
    out: list[str] = []
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        picked = list(ALL_TASKS) if name == "all" else GROUPS.get(name, [name])
        for p in picked:
            if p not in ALL_TASKS:
                raise ValueError(f"unknown task {p!r}; built-in tasks: {', '.join([*ALL_TASKS, *GROUPS, 'all'])}")
            if p not in out:
                out.append(p)
    if not out:
        raise ValueError("no task given")
    return out


def instance_held_out(key: str) -> bool:
    """Is this instance held out? Real translations by their English word (``HELD_OUT_WORDS``), the rest
    by the hash of what they ask."""
    task, _, english = key.partition(":")
    if task in REAL_LANGUAGES:
        return english in HELD_OUT_WORDS
    return held_out(key)


def sample(task: str, rng: random.Random, split: str = "test", group: str | None = None) -> dict:
    """One instance of ``task`` from ``split`` (``train`` or ``test`` = held out), as a record."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    if task in IN_CONTEXT:
        r = IN_CONTEXT[task](rng, split)
        choices = [r["completion"], *dict.fromkeys(d for d in r.pop("distractors") if d != r["completion"])]
        order = list(range(len(choices)))
        rng.shuffle(order)
        r.pop("key")
        return {
            "task": task,
            **r,
            "context": r["prompt"],
            "choices": [choices[i] for i in order],
            "answer": order.index(0),
            "group": "",
        }
    make = TASKS[task]
    for _ in range(10_000):  # rejection: ~15 % of instances are held out
        key, x, y, distractors, g, desc = make(rng, group)
        if instance_held_out(key) == (split == "test"):
            break
    else:  # pragma: no cover - every task has instances on both sides
        raise RuntimeError(f"no {split} instance of {task}")
    choices = [y, *dict.fromkeys(d for d in distractors if d != y)]
    order = list(range(len(choices)))
    rng.shuffle(order)
    return {
        "task": task,
        "prompt": x,
        "completion": y,
        "context": x,
        "choices": [choices[i] for i in order],
        "answer": order.index(0),
        "group": g,
        "description": desc,
    }


def instances(task: str, n: int, seed: int = 0, split: str = "test") -> list[dict]:
    """``n`` records of ``task`` (distinct ones where the task has that many)."""
    rng = random.Random(f"{task}:{seed}:{split}")
    out, seen = [], set()
    for _ in range(n * 50):
        r = sample(task, rng, split)
        if (r["prompt"], r["completion"], r["group"]) in seen:
            continue
        seen.add((r["prompt"], r["completion"], r["group"]))
        out.append(r)
        if len(out) == n:
            break
    return out


TASK_WEIGHTS = {"add2": 4.0, "add3": 2.0, "sub2": 2.0, "sub3": 2.0, "lexicon": 12.0, "affix": 6.0}
TASK_WEIGHTS |= {lang: 4.0 for lang in REAL_LANGUAGES}
KNOWLEDGE_WEIGHT = 14.0  # prose facts about data/words.tsv, in documents of their own


def training_documents(
    n: int,
    seed: int = 0,
    tasks: str = "all",
    max_examples: int = 8,
    weights: dict[str, float] | None = None,
    knowledge_weight: float = KNOWLEDGE_WEIGHT,
) -> list[str]:
    """``n`` few-shot-style documents of train instances: one task (and language) per document, an
    optional task description (half the documents), then 1..``max_examples`` lines ``input => output``.

    The first line of a document is a zero-shot instance, the later ones are few-shot: whatever the model
    learns about using earlier lines to answer later ones is in-context learning. Tasks are drawn by
    ``weights`` (``TASK_WEIGHTS``; 1 for the others). In-context tasks draw a fresh lexicon or affix per
    document whose later lines repeat or follow the earlier ones; they and the real translations are
    written inline a third of the time (``sky = ciel; dog = chien; cat = chat``), the seed's prompt style.
    ``knowledge_weight`` adds documents of prose facts (``knowledge_document``), the only place where the
    held-out words' translations appear."""
    rng = random.Random(seed)
    names = resolve(tasks)
    table = TASK_WEIGHTS if weights is None else weights
    names_w = [table.get(t, 1.0) for t in names]
    if knowledge_weight > 0 and any(t in REAL_LANGUAGES for t in names):
        names, names_w = [*names, "knowledge"], [*names_w, knowledge_weight]
    docs = []
    for _ in range(n):
        task = rng.choices(names, names_w)[0]
        if task == "knowledge":
            docs.append(knowledge_document(rng, rng.randint(2, 6)))
            continue
        if task in IN_CONTEXT:
            docs.append(_in_context_document(task, rng, max_examples))
            continue
        first = sample(task, rng, "train")
        records = [first] + [
            sample(task, rng, "train", first["group"] or None) for _ in range(rng.randint(0, max_examples - 1))
        ]
        if task in REAL_LANGUAGES and rng.random() < 1 / 3:
            docs.append("; ".join(f"{r['prompt']} = {r['completion']}" for r in records))
            continue
        lines = [format_example(r["prompt"], r["completion"]) for r in records]
        if rng.random() < 0.5:
            lines.insert(0, first["description"])
        docs.append("\n".join(lines))
    return docs


def _in_context_document(task: str, rng: random.Random, max_examples: int) -> str:
    n_lines = rng.randint(3, max_examples + 1)
    if task == "lexicon":
        # every line is a new pair or, 60 % of the time, one seen before: the repeats teach copying
        pairs = lexicon_pairs(rng, "train", n_lines)
        lines, shown = [], 0
        for _ in range(n_lines):
            if shown and (shown == len(pairs) or rng.random() < 0.6):
                lines.append(pairs[rng.randrange(shown)])
            else:
                lines.append(pairs[shown])
                shown += 1
    else:
        affix = fresh_affix(rng, "train")
        lines = [(w, w + affix) for w in rng.sample(WORDS, n_lines)]
    if rng.random() < 1 / 3:
        return "; ".join(f"{x} = {y}" for x, y in lines)
    text = "\n".join(format_example(x, y) for x, y in lines)
    if rng.random() < 0.5:
        text = IN_CONTEXT[task](rng, "train")["description"] + "\n" + text
    return text


SEPARATOR = " =>"


def format_example(x: str, y: str, sep: str = SEPARATOR) -> str:
    """``sea otter`` + ``loutre de mer`` → ``sea otter => loutre de mer``."""
    return f"{x}{sep} {y}"
