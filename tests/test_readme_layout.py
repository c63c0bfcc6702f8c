"""The README's layout table and ``tests/test_layout.py`` say the same thing: which package may import which,
which modules are the applications, and the files the table names exist. The table is parsed, not trusted."""

from __future__ import annotations

import re
from pathlib import Path

from test_layout import APPLICATIONS, FORBIDDEN, ROOT, layer

LAYERS = ("core", "gpt", "clip", "dalle", "data")  # what an import rule names, besides the applications
# how the table's "may import" column names each layer
LAYER_NAMES = {
    "core": "core",
    "data": "data",
    "the gpt head": "gpt",
    "the clip head": "clip",
    "the dall·e head": "dalle",
}
EVERYTHING = {*LAYERS, "application"}
TABLE_INTRO = "The layout shows which way dependencies run"


def layout_table(text: str) -> list[list[str]]:
    """The body rows (as cells) of the first table after the layout paragraph."""
    rows: list[list[str]] = []
    for line in text[text.index(TABLE_INTRO) :].splitlines()[1:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # past the header and its rule


def row_layer(where: str) -> str | None:
    """The layer of ``tests/test_layout.py`` that a "where" cell names; ``None`` for a row of no code layer."""
    if where == "applications":
        return "application"
    layers = {layer(path.strip("/").replace("/", ".")) for path in re.findall(r"`([^`]+/)`", where)}
    return layers.pop() if len(layers) == 1 and layers <= EVERYTHING else None


def may_import(cell: str) -> tuple[set[str], list[str]]:
    """The layers a "may import" cell allows (remarks in parentheses and after ';' aside), and words it does not
    know as a layer."""
    allowed, unknown = set(), []
    clause = re.sub(r"\s*\([^)]*\)", "", cell).split(";")[0]
    for item in filter(None, (i.strip().strip("`").lower().removesuffix(" only") for i in clause.split(","))):
        if item == "anything":
            allowed |= EVERYTHING
        elif item in LAYER_NAMES:
            allowed.add(LAYER_NAMES[item])
        else:
            unknown.append(item)
    return allowed, unknown


def rule_allows(src: str) -> set[str]:
    """What ``tests/test_layout.py`` lets ``src`` import (its own layer included)."""
    if src == "application":
        return set(EVERYTHING)
    return {dst for dst in LAYERS if (src, dst) not in FORBIDDEN}


def expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^}]*)\}", path)
    return [path[: m.start()] + alt + path[m.end() :] for alt in m.group(1).split(",")] if m else [path]


def named_paths(where: str, what: str) -> list[str]:
    """Files and folders the row names, relative to the repository (``x.py`` is in the row's package)."""
    base = re.search(r"`([^`]+/)`", where)
    out = re.findall(r"`([^`]+/)`", where)
    for token in re.findall(r"`([^`]+)`", what):
        if not re.fullmatch(r"[\w/{},.]+(\.py|/)", token):
            continue  # a function or module name, not a path
        path = token if "/" in token or base is None else base.group(1) + token
        out.extend(expand_braces(path))
    return out


def disagreements(text: str, root: Path = ROOT) -> list[str]:
    """One line for each thing the README's layout table says otherwise than ``tests/test_layout.py``."""
    out, seen = [], set()
    for where, what, imports in layout_table(text):
        out += [f"{where}: `{p}` does not exist" for p in named_paths(where, what) if not (root / p).exists()]
        src = row_layer(where)
        if src is None:
            continue
        seen.add(src)
        allowed, unknown = may_import(imports)
        out += [f"{where}: {word!r} names no layer (one of {sorted(LAYER_NAMES)}, or anything)" for word in unknown]
        allowed.add(src)
        if allowed - rule_allows(src):
            out.append(f"{where}: the table allows {sorted(allowed - rule_allows(src))}, the layout test forbids it")
        if rule_allows(src) - allowed:
            out.append(
                f"{where}: the layout test allows {sorted(rule_allows(src) - allowed)}, the table does not say so"
            )
        if src == "application":
            listed = {p.removesuffix(".py").strip("/").replace("/", ".") for p in named_paths(where, what)}
            if listed != set(APPLICATIONS):
                out.append(f"applications: the table lists {sorted(listed)}, the layout test {sorted(APPLICATIONS)}")
            if "nothing imports them" not in imports:
                out.append("applications: the table does not say that nothing imports them")
    if seen != EVERYTHING:
        out.append(f"the table has no row for {sorted(EVERYTHING - seen)}")
    return out


def test_the_readme_layout_table_says_what_the_layout_test_checks():
    assert disagreements((ROOT / "README.md").read_text()) == []


def test_the_comparison_sees_a_table_that_drifts():
    table = f"""{TABLE_INTRO}:

| where | what | may import |
|---|---|---|
| `multimodal/` (core) | `transformer.py`, `nowhere.py` | core only (no head, not `data`) |
| `multimodal/gpt/` | GPT head | core, `data` |
| `clip/` | CLIP head | core, `data`, the GPT head |
| `dalle/` | DALL·E head; `dalle/vae/` | core, `data` |
| applications | `multimodal/demo.py`, `multimodal/serve/`; `multimodal/{{generate,score,fewshot,scaling}}.py` | anything |
| `configs/`, `benches/` | YAML; benchmarks | |

The next paragraph.
"""
    assert disagreements(table) == [
        "`multimodal/` (core): `multimodal/nowhere.py` does not exist",
        "`clip/`: the table allows ['gpt'], the layout test forbids it",
        "`dalle/`: the layout test allows ['clip', 'gpt'], the table does not say so",
        "applications: the table lists ['multimodal.demo', 'multimodal.fewshot', 'multimodal.generate', "
        "'multimodal.scaling', 'multimodal.score', 'multimodal.serve'], the layout test "
        f"{sorted(APPLICATIONS)}",
        "applications: the table does not say that nothing imports them",
        "`configs/`, `benches/`: `benches/` does not exist",
        "the table has no row for ['data']",
    ]
    assert may_import("core, `datasets`") == ({"core"}, ["datasets"])
