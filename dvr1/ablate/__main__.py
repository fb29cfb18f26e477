"""`python -m dvr1.ablate ...` = `dvr1 ablate ...`."""

import sys

from dvr1.ablate import main

sys.exit(main())
