"""`python -m langgraph_retention.cli`."""

import sys

from langgraph_retention.cli import main

sys.exit(main())
