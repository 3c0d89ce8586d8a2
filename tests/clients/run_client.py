"""Command-line driver: ``python -m natten_mps.as_natten --natten-version V run_client.py MODEL``
runs ``checks.check_MODEL`` under the alias the runner installed and prints one JSON line:
the NATTEN version the program saw, ``sys.argv`` and the differences against the reference."""
import json
import sys

import natten  # noqa: F401  (served by the runner)

import checks

if __name__ == "__main__":
    model = sys.argv[1]
    result = checks.CHECKS[model](natten.__version__)
    print(json.dumps({"version": natten.__version__, "argv": sys.argv, "name": __name__, **result}))
