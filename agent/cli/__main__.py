"""`python -m amber.agent.cli`."""

import sys

from amber.agent.cli.parser import main

sys.exit(main())
