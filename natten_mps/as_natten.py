"""Run a program written against upstream NATTEN, unmodified, with ``natten`` served by natten_mps.

    python -m natten_mps.as_natten [--natten-version V] [--replace] script.py [args ...]
    python -m natten_mps.as_natten [--natten-version V] -m package.module [args ...]
    python -m natten_mps.as_natten [--natten-version V] -c "code" [args ...]
    python -m natten_mps.as_natten --print-env [--natten-version V]

The alias of NATTEN ``V`` (``0.14``, ``0.15``, ``0.17``, ``0.20``, ``0.21`` or a full version such as
``0.17.1``; default: ``$NATTEN_MPS_AS_NATTEN``, else 0.21) is installed
(:func:`natten_mps.install_as_natten`), then the program runs as ``python script.py args`` /
``python -m module args`` would run it: ``sys.argv``, ``__main__``, ``sys.path[0]`` as Python sets
them. Processes the program starts (``multiprocessing`` workers, which re-import the main script
on macOS; ``subprocess`` calls to Python) inherit ``NATTEN_MPS_AS_NATTEN`` and find the alias through
a placeholder directory prepended to ``PYTHONPATH``. ``--print-env`` prints those two variables as
``export`` lines for launchers that cannot change their command line.
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import List, Optional

from .compat import releases
from .natten_alias import ENV_VAR, install_as_natten, path_entry

USAGE = ("usage: python -m natten_mps.as_natten [--natten-version V] [--replace] "
         "(script.py | -m module | -c code) [args ...]\n"
         "       python -m natten_mps.as_natten --print-env [--natten-version V]")


def _fail(message: str) -> int:
    print(f"natten_mps.as_natten: {message}\n{USAGE}", file=sys.stderr)
    return 2


def _export_environment(version: str) -> None:
    """For the processes the program starts: the environment, and ``sys.path`` too, since
    ``multiprocessing``'s spawned workers take the parent's ``sys.path``."""
    os.environ[ENV_VAR] = version
    entry = path_entry()
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != entry]
    os.environ["PYTHONPATH"] = os.pathsep.join([entry] + parts)
    if entry not in sys.path:
        sys.path.insert(1, entry)


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    version = os.environ.get(ENV_VAR) or releases.DEFAULT_VERSION
    replace = print_env = False
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        if opt == "--natten-version" or opt.startswith("--natten-version="):
            if "=" in opt:
                version = opt.split("=", 1)[1]
            elif args:
                version = args.pop(0)
            else:
                return _fail("--natten-version needs a value")
        elif opt == "--replace":
            replace = True
        elif opt == "--print-env":
            print_env = True
        elif opt == "--help":
            print(__doc__)
            return 0
        else:
            return _fail(f"unknown option {opt!r}")
    try:
        releases.release(version)
    except ValueError as e:
        return _fail(str(e))
    if print_env:
        print(f"export {ENV_VAR}={version}")
        print(f"export PYTHONPATH={path_entry()}${{PYTHONPATH:+:$PYTHONPATH}}")
        return 0
    if not args:
        return _fail("nothing to run")
    _export_environment(version)
    install_as_natten(version, replace=replace)
    target = args.pop(0)
    if target in ("-m", "-c"):
        if not args:
            return _fail(f"{target} needs an argument")
        what = args.pop(0)
        if target == "-c":
            sys.argv = ["-c"] + args
            sys.path[0] = ""
            exec(compile(what, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            return 0
        sys.argv = [what] + args
        sys.path[0] = os.getcwd()
        runpy.run_module(what, run_name="__main__", alter_sys=True)
        return 0
    if target.startswith("-"):
        return _fail(f"unknown option {target!r}")
    sys.argv = [target] + args
    sys.path[0] = os.path.dirname(os.path.abspath(target))
    runpy.run_path(target, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
