"""`python -m multimeditron ...` (also under torchrun and the deepspeed launcher)."""
import sys

from multimeditron.cli import main

if __name__ == "__main__":
    sys.exit(main())
