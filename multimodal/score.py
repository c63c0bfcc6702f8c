"""``python -m multimodal.score``: an alias of ``python -m multimodal.gpt.score`` (the GPT head's tool)."""

import sys

from multimodal.gpt.score import main

if __name__ == "__main__":
    sys.exit(main())
