"""``python -m rleseg ...`` is the same as the ``rleseg`` console script."""

from rleseg.cli import main

raise SystemExit(main())
