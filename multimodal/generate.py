"""``python -m multimodal.generate``: an alias of ``python -m multimodal.gpt.generate`` (the GPT head's tool)."""

import sys

from multimodal.gpt.generate import main

if __name__ == "__main__":
    sys.exit(main())
