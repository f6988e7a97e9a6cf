"""Build script: compiles every Cython module in dbzero_ext/ into an extension."""
import glob
import os

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - build requirement missing
    raise SystemExit("Building dbzero needs Cython (pip install cython)") from exc

DIRECTIVES = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
}

extensions = [
    Extension(
        "dbzero_ext." + os.path.splitext(os.path.basename(path))[0],
        [path],
        extra_compile_args=["-O2"],
    )
    for path in sorted(glob.glob(os.path.join("dbzero_ext", "*.pyx")))
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES, quiet=True))
