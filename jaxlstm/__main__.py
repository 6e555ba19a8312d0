"""``python -m jaxlstm``: the ``jaxlstm`` command."""

import sys

from jaxlstm.cli import main

sys.exit(main())
