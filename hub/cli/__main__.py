"""`python -m amber.hub.cli`."""

import sys

from amber.hub.cli.parser import main

sys.exit(main())
