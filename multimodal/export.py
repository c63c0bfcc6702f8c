"""``python -m multimodal.export --checkpoint X --format hf|open_clip --out DIR``: our models in the peers' formats.

- ``hf``: a GPT → a Hugging Face GPT-2 directory (``config.json``, ``model.safetensors``, ``generation_config.json``,
  tokenizer files) for ``AutoModelForCausalLM`` / ``AutoTokenizer``, lm-evaluation-harness (``--model hf``),
  ``transformers serve`` and the tools built on them.
- ``open_clip``: a CLIP → open_clip's ``local-dir:`` layout (``open_clip_config.json`` + ``open_clip_model.safetensors``)
  for ``open_clip.create_model_and_transforms("local-dir:DIR")``, clip_benchmark and clip-retrieval.

What a format cannot express (a DALL·E, a GPT with a layer GPT-2 lacks, a CLIP with another tokenizer) is refused
with one line naming it. An application on top of the heads: nothing imports it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import nn

from multimodal.checkpoint import CheckpointError, load_model

FORMATS = {"hf": "gpt", "open_clip": "clip"}  # format -> the model kind it holds


def export_hf(checkpoint: str | Path | nn.Module, out: str | Path) -> Path:
    """A GPT (a checkpoint path or the model) → a Hugging Face GPT-2 directory ``out``."""
    from multimodal.gpt.hf import export_hf_gpt2

    model = _model(checkpoint, "hf")
    return export_hf_gpt2(model, out)


def export_open_clip(checkpoint: str | Path | nn.Module, out: str | Path) -> Path:
    """A CLIP (a checkpoint path or the model) → open_clip's ``local-dir:`` directory ``out``."""
    from clip.openclip import export_openclip

    model = _model(checkpoint, "open_clip")
    return export_openclip(model, out)


def _model(checkpoint: str | Path | nn.Module, fmt: str) -> nn.Module:
    model = checkpoint if isinstance(checkpoint, nn.Module) else load_model(checkpoint)
    kind = getattr(model, "kind", type(model).__name__)
    if kind != FORMATS[fmt]:
        other = [f for f, k in FORMATS.items() if k == kind]
        hint = f"; use --format {other[0]}" if other else f"; only {' and '.join(FORMATS.values())} models export"
        raise CheckpointError(f"--format {fmt} holds a {FORMATS[fmt]!r} model; this is a {kind!r} model{hint}")
    return model


EXPORTERS = {"hf": export_hf, "open_clip": export_open_clip}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m multimodal.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="export directory, Lightning .ckpt, HF GPT-2 or open_clip dir")
    p.add_argument("--format", required=True, choices=sorted(EXPORTERS), help="hf (GPT) | open_clip (CLIP)")
    p.add_argument("--out", required=True, help="directory to write")
    return p


def main(argv: list[str] | None = None) -> int:
    from multimodal.cli import fail

    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return fail(f"{out}: exists and is not a directory")
    try:
        written = EXPORTERS[args.format](args.checkpoint, out)
    except (CheckpointError, OSError, ValueError) as e:
        return fail(e)
    loader = {
        "hf": f"AutoModelForCausalLM.from_pretrained({str(written)!r})",
        "open_clip": f"open_clip.create_model_and_transforms('local-dir:{written}')",
    }[args.format]
    print(f"wrote {written} (load with {loader})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
