import sys

from dalle.vae.cli import main

sys.exit(main())
