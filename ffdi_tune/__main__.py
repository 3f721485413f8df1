import sys

from ffdi_tune.cli import main

sys.exit(main())
