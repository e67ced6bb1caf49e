"""`python -m bucketdav` is the `bucketdav` command."""

import sys

from bucketdav.cli import main

sys.exit(main())
