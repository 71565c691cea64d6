"""Build the compiled core: every .pyx under csrc/duro/_core becomes duro._core.<name>; mdb and log link liblmdb."""

import contextlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("DURO_DEBUG") == "1"  # debug info, -O0, line tracing and annotated HTML
PYX = sorted(Path("csrc/duro/_core").glob("*.pyx"))
LMDB_USERS = {"mdb", "log"}  # log cimports mdb and calls liblmdb directly
INSTALL_LMDB = """duro's compiled core links the LMDB C library: install it with its header (lmdb.h), then build again:
  Debian/Ubuntu:  apt-get install liblmdb-dev
  Fedora/RHEL:    dnf install lmdb-devel   (RHEL/Alma/Rocky: from EPEL)
  Alpine:         apk add lmdb-dev
  macOS:          brew install lmdb
  Windows:        vcpkg install lmdb:x64-windows, then set DURO_LMDB_INCLUDE and DURO_LMDB_LIB (below)
  conda:          conda install -c conda-forge lmdb
Or set DURO_LMDB_INCLUDE to the folder holding lmdb.h and DURO_LMDB_LIB to the one holding the library (with vcpkg:
<vcpkg>\\installed\\x64-windows\\include and ...\\lib). Prebuilt wheels bundle LMDB and need none of this."""

if not PYX:  # an sdist missing csrc/ would otherwise build a pure-Python wheel that cannot import duro._core
    sys.exit(f"setup.py: no .pyx sources under {Path('csrc/duro/_core').resolve()}: this source tree is incomplete")


def find_lmdb() -> tuple[list[str], list[str]] | None:
    """(include dirs, library dirs) for liblmdb, or None when it is not found.

    Looked for in this order: DURO_LMDB_INCLUDE / DURO_LMDB_LIB, pkg-config, then the usual prefixes.
    Empty lists mean the compiler finds it on its own (pkg-config omits the system directories).
    """
    include, lib = os.environ.get("DURO_LMDB_INCLUDE"), os.environ.get("DURO_LMDB_LIB")
    if include or lib:
        if not (include and (Path(include) / "lmdb.h").is_file()):
            sys.exit(f"setup.py: DURO_LMDB_INCLUDE must be the folder holding lmdb.h (it is {include or 'unset'})"
                     f"\n\n{INSTALL_LMDB}")
        return [include], [lib] if lib else []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):  # no pkg-config, or it knows no lmdb
        pc = subprocess.run(["pkg-config", "--cflags", "--libs", "lmdb"], capture_output=True, text=True, check=True)
        words = shlex.split(pc.stdout)
        return [w[2:] for w in words if w.startswith("-I")], [w[2:] for w in words if w.startswith("-L")]
    prefixes = ["/usr", "/usr/local", "/opt/homebrew", "/opt/local"]
    prefixes += [os.environ[v] for v in ("CONDA_PREFIX", "PREFIX") if os.environ.get(v)]
    for prefix in map(Path, prefixes):
        if (prefix / "include" / "lmdb.h").is_file():  # /usr: every compiler searches it already
            return ([], []) if prefix == Path("/usr") else ([str(prefix / "include")], [str(prefix / "lib")])
    return None


class BuildExt(build_ext):
    """build_ext that finds liblmdb before compiling anything and picks release or debug flags per compiler."""

    def build_extensions(self) -> None:
        """Stop with what to install when LMDB is missing; otherwise compile with its paths and our flags."""
        found = find_lmdb()
        if found is None:
            sys.exit(f"setup.py: LMDB not found\n\n{INSTALL_LMDB}")
        if self.compiler.compiler_type == "msvc":
            cflags, ldflags = (["/Od", "/Zi"], ["/DEBUG"]) if DEBUG else (["/O2"], [])
        elif DEBUG:
            cflags, ldflags = ["-O0", "-g"], []
        else:  # -g0 overrides the -g that Python's own CFLAGS often carry; strip the rest at link time
            cflags, ldflags = ["-O2", "-g0"], (["-Wl,-S", "-Wl,-x"] if sys.platform == "darwin" else ["-s"])
        if self.compiler.compiler_type != "msvc":  # no run path to the building Python's lib/ (pyenv's LDSHARED)
            self.compiler.linker_so = [a for a in self.compiler.linker_so if not a.startswith("-Wl,-rpath")]
        for ext in self.extensions:
            ext.extra_compile_args += cflags
            ext.extra_link_args += ldflags
            if ext.name.rsplit(".", 1)[1] in LMDB_USERS:
                ext.include_dirs += found[0]
                ext.library_dirs += found[1]
        super().build_extensions()


extensions = [
    Extension(
        f"duro._core.{pyx.stem}",
        [str(pyx)],
        define_macros=[("CYTHON_TRACE_NOGIL", "1")] if DEBUG else [],
        libraries=["lmdb"] if pyx.stem in LMDB_USERS else [],
    )
    for pyx in PYX
]

setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        include_path=["csrc"],
        annotate=DEBUG,
        force=DEBUG,  # the C of a release build has no line tracing: regenerate it rather than reuse it
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False, "linetrace": DEBUG},
    ),
)
