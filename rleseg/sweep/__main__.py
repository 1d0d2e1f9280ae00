"""``python -m rleseg.sweep --run-trial JOB.json``: a trial's child process (internal)."""

import sys

from rleseg.sweep.trial import child_main

if len(sys.argv) == 3 and sys.argv[1] == "--run-trial":
    raise SystemExit(child_main(sys.argv[2]))
raise SystemExit("usage: python -m rleseg.sweep --run-trial JOB.json (internal; use `rleseg sweep`)")
