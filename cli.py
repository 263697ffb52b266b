"""attnscope's command line in the checkout: ``python cli.py SUBCOMMAND ...`` (installed: ``attnscope SUBCOMMAND ...``)."""

import sys

from attnscope.cli import main

if __name__ == "__main__":
    sys.exit(main())
