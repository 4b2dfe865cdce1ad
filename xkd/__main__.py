import sys

from xkd.cli import main

sys.exit(main())
