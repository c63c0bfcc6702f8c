"""``python -m multimodal.scaling``: an alias of ``python -m multimodal.gpt.scaling`` (the GPT head's tool)."""

import sys

from multimodal.gpt.scaling import main

if __name__ == "__main__":
    sys.exit(main())
