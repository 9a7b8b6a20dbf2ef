"""`python -m algm_export ...` = the `algm-export` command."""

import sys

from algm_export.cli import main

if __name__ == "__main__":
    sys.exit(main())
