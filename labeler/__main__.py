"""``python -m labeler``: the command line without the installed ``labeler`` script.

Submitted jobs use it (``python -m labeler run ...``), since a cluster that receives the package
as shipped source has no console script for it.
"""

import sys

from labeler.cli import main

sys.exit(main())
