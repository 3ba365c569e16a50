"""Only for the optional compiled part; everything else is in pyproject.toml.

``pytest_asyncbudget/_speedups.c`` holds faster twins of the plugin's two hottest
wrappers (see the file). It is built where a C compiler is at hand and skipped, without
failing the install, where there is none (``optional=True``), on Windows, on PyPy and on
free-threaded CPython. The plugin then uses its pure-Python wrappers, which behave the
same.
"""

import platform
import sys
import sysconfig

from setuptools import Extension, setup

ext_modules = []
if (
    platform.python_implementation() == "CPython"
    and sys.platform != "win32"
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
):
    ext_modules.append(
        Extension("pytest_asyncbudget._speedups", ["pytest_asyncbudget/_speedups.c"], optional=True)
    )

setup(ext_modules=ext_modules)
