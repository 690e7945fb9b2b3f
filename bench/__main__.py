"""`python -m bench [--smoke] [--only W1,W3] [--systems chatlab,socketio]`: see bench/run.py."""

from bench.run import main

raise SystemExit(main())
