"""Build the native extension ``axon.store._fastio``.

Set ``AXON_CYTHON_DEBUG=1`` for an annotated, line-traced debug build.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("AXON_CYTHON_DEBUG") == "1"
macros = [("_GNU_SOURCE", "1"), ("_FILE_OFFSET_BITS", "64")]
directives = {"language_level": "3", "boundscheck": False, "wraparound": False}
if debug:
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
    directives.update(linetrace=True, boundscheck=True)

extensions = [
    Extension(
        "axon.store._fastio",
        ["src/axon/store/_fastio.pyx"],
        define_macros=macros,
        extra_compile_args=["-O2"] if not debug else ["-O0", "-g"],
    )
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, annotate=debug))
