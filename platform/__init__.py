"""The platform's command-line package, which also stands in for the standard-library `platform` module.

Running `python -m platform.search` from the repo root with a Python that lacks the project's start-up hook
(dcell_core/_platform_path.py, installed into .venv by scripts/setup.sh) puts this package where every library
looks for the standard module (`platform.system()`, `platform.machine()`, ...). So the standard module is loaded
from the standard library's own file and its whole API is re-exported here. Worker-side code never lives in this
package: Ray workers import the standard `platform` first and could not unpickle functions defined here.
"""
import importlib.util as _ilu
import os as _os
import sysconfig as _sysconfig

_spec = _ilu.spec_from_file_location("_stdlib_platform", _os.path.join(_sysconfig.get_paths()["stdlib"],
                                                                        "platform.py"))
_stdlib_platform = _ilu.module_from_spec(_spec)
_spec.loader.exec_module(_stdlib_platform)
globals().update({k: v for k, v in vars(_stdlib_platform).items() if not (k.startswith("__") and k.endswith("__"))})
del _ilu, _os, _sysconfig, _spec
