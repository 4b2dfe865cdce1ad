import sys

from xkd.commands import main

sys.exit(main())
