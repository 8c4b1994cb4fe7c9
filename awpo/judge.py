"""`python -m awpo.judge`: the judge command line, which lives in ``awpo.judges.cli``."""
import sys

from .judges.cli import main

if __name__ == "__main__":
    sys.exit(main())
