import os
import sys

from policy_distill.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun every file is written, closed and its process group destroyed by now. Leave
    # without the interpreter's teardown: there a gloo rank aborted a run that had finished and
    # printed its result ("terminate called without an active exception", exit status -6, seen in
    # CI and in session 12 under load), which torchrun then reports as a failed run.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
