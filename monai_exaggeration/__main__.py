"""``python -m monai_exaggeration``: see :mod:`monai_exaggeration.cli`."""

import sys

from monai_exaggeration.cli import main

sys.exit(main())
