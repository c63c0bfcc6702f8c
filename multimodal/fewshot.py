"""``python -m multimodal.fewshot``: an alias of ``python -m multimodal.gpt.fewshot`` (the GPT head's tool)."""

import sys

from multimodal.gpt.fewshot import main

if __name__ == "__main__":
    sys.exit(main())
