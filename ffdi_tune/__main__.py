"""``python -m ffdi_tune``: the same command line as ``ffdi-tune``."""

from ffdi_tune.cli import main

raise SystemExit(main())
