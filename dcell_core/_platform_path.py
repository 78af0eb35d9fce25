"""Lets `python -m platform.<cli>` run from any directory with the project's virtual environment.

The repo's command-line package is called `platform`, like the standard-library module. From the repo root the
package is found first on sys.path; anywhere else the standard module is found, which is not a package, so
`python -m platform.search` fails there. scripts/setup.sh writes a .pth file into the virtual environment's
site-packages that imports this module at interpreter start: it imports the standard `platform` and, when that
has no `__path__`, gives it the repo's platform/ directory as one. `platform.search`, `platform.promote`, ...
then load the repo's CLI modules as submodules, while `platform.system()` and the rest of the module stay the
standard library's own. The repo's platform/__init__.py does not run then (the standard module is already the
`platform` in sys.modules); it is what stands in for the standard module when this hook is not installed.

Cost at start-up (`python -X importtime -c pass`): about 4 ms, mostly `typing` (through dcell_core/__init__.py)
and `platform`, which torch, Ray, MLflow and pytest import anyway; this module itself takes about 0.2 ms.
"""
import os
import platform

if not hasattr(platform, "__path__"):
    platform.__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "platform")]
