import sys

from multimodal.serve.cli import main

sys.exit(main())
