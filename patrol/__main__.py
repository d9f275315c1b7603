import sys

from patrol.cli import main

sys.exit(main())
