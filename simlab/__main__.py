"""`python -m simlab`."""

import sys

from simlab.cli.main import main

sys.exit(main())
