"""`python -m bench [--smoke] [--only W1,W5] [--systems chatlab,channels]`: see bench/runner.py."""

from bench.runner import main

raise SystemExit(main())
