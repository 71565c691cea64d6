"""What ships: the sdist and the repaired manylinux wheel that ``make wheel`` builds, installed and run as a user would.

The wheel goes into a fresh virtualenv whose PATH holds nothing but that virtualenv's bin (no compiler can be
found) and runs from a folder outside this repository (no build tree to import): the order demo, the ``duro``
command, and the smoke subset that cibuildwheel's test-command runs against every wheel it builds. The
archives are checked for what a user and a build from source need. The artefacts come from ``make wheel``,
which this module runs first: it rebuilds only when a source changed (``make test`` has just done it).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION: str = PYPROJECT["project"]["version"]
DIST = REPO / "wheels" / "dist"
CORE_MODULES = sorted(p.stem for p in (REPO / "csrc" / "duro" / "_core").glob("*.pyx"))
LMDB_LICENCE = "licenses/LMDB-OpenLDAP-2.8.txt"
COMPILERS = ("cc", "gcc", "clang", "c++", "g++", "x86_64-linux-gnu-gcc")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),  # a first `make wheel` compiles the core (~1 min)
    pytest.mark.skipif(sys.platform != "linux", reason="make wheel builds a manylinux wheel (Linux only)"),
]


@dataclass(frozen=True)
class Artefacts:
    wheel: Path
    sdist: Path


@dataclass(frozen=True)
class Venv:
    root: Path
    env: dict[str, str]

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def run(self, *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
        """Run ``args`` in this virtualenv's environment; its stdout once it exited 0."""
        proc = subprocess.run(args, cwd=cwd, env=env or self.env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{shlex.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout


@pytest.fixture(scope="module")
def artefacts() -> Artefacts:
    """The sdist and the repaired wheel of this version, brought up to date by ``make wheel``."""
    if shutil.which("make") is None:
        pytest.fail("these tests need the artefacts of `make wheel`, and `make` is not on PATH", pytrace=False)
    proc = subprocess.run(["make", "--no-print-directory", "wheel"], cwd=REPO, capture_output=True, text=True,
                          timeout=840)
    if proc.returncode != 0:
        pytest.fail(f"`make wheel` failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}", pytrace=False)
    wheels = sorted(DIST.glob(f"duro-{VERSION}-*.whl"))
    assert len(wheels) == 1, f"expected one wheel of duro {VERSION} in {DIST}, found {[w.name for w in wheels]}"
    sdist = DIST / f"duro-{VERSION}.tar.gz"
    assert sdist.is_file(), f"no sdist {sdist.name} in {DIST}"
    return Artefacts(wheels[0], sdist)


def clean_env(bin_dir: Path) -> dict[str, str]:
    """This process's environment with PATH reduced to ``bin_dir`` and nothing that points into a source tree.

    pip's own settings (index, certificates, cache) are kept: it installs the wheel's dependencies.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP") and not k.startswith("DURO_")}
    env["PATH"] = str(bin_dir)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def venv(artefacts: Artefacts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh virtualenv holding the wheel (and its dependencies from the index: binary only), nothing else."""
    root = tmp_path_factory.mktemp("wheel-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, capture_output=True, timeout=120)
    v = Venv(root, clean_env(root / "bin"))
    v.run(v.python, "-m", "pip", "install", "-q", "--only-binary", ":all:", str(artefacts.wheel), cwd=root.parent)
    yield v


def test_wheel_holds_the_compiled_core_stubs_licences_and_lmdb(artefacts: Artefacts) -> None:
    name = artefacts.wheel.name
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert re.fullmatch(rf"duro-{re.escape(VERSION)}-{py}-{py}-manylinux\S+\.whl", name), name
    with zipfile.ZipFile(artefacts.wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"duro-{VERSION}.dist-info/METADATA").decode()
        sos = {n: z.read(n) for n in names if n.startswith("duro/_core/") and n.endswith(".so")}
    for mod in CORE_MODULES:
        assert any(re.fullmatch(rf"duro/_core/{mod}\.cpython-{py[2:]}\S*\.so", n) for n in sos), f"{mod} .so missing"
        assert f"duro/_core/{mod}.pyi" in names
    assert len(sos) == len(CORE_MODULES)
    assert "duro/py.typed" in names
    # The web UI's assets ship in the wheel: `duro ui` needs no build step at install.
    assert {"duro/ui/static/index.html", "duro/ui/static/app.css", "duro/ui/static/js/main.js"} <= names
    assert {f"duro-{VERSION}.dist-info/licenses/LICENSE", f"duro-{VERSION}.dist-info/licenses/{LMDB_LICENCE}"} <= names
    assert [n for n in names if re.fullmatch(r"duro\.libs/liblmdb-[0-9a-f]+\.so[.0-9]*", n)], "liblmdb not bundled"
    assert not [n for n in names if n.endswith((".pyx", ".pxd", ".c"))]
    libdir = str(sysconfig.get_config_var("LIBDIR") or "/nonexistent").encode()
    for n, data in sos.items():  # release build: no debug sections, no static symbol table, no run path to here
        assert b".debug_info" not in data and b".symtab" not in data, f"{n} carries debug info or symbols"
        assert libdir not in data, f"{n} has a run path to the building Python's {libdir.decode()}"
    # The version the wheel reports is its tag's; uvloop is an extra, not a requirement.
    assert f"\nVersion: {VERSION}\n" in meta
    requires = [line.removeprefix("Requires-Dist: ") for line in meta.splitlines() if line.startswith("Requires-Dist")]
    assert {r.split(">")[0] for r in requires if "extra ==" not in r} == {"cronsim", "msgspec", "orjson", "rich"}
    assert any(r.startswith("uvloop") and 'extra == "uvloop"' in r for r in requires)


def test_sdist_holds_everything_a_build_needs(artefacts: Artefacts) -> None:
    top = f"duro-{VERSION}/"
    with tarfile.open(artefacts.sdist) as t:
        names = {m.name.removeprefix(top) for m in t.getmembers() if m.isfile()}
    need = {"PKG-INFO", "setup.py", "pyproject.toml", "MANIFEST.in", "LICENSE", LMDB_LICENCE, "README.md",
            "CHANGELOG.md", "src/duro/py.typed"}
    assert need <= names, f"missing from the sdist: {sorted(need - names)}"
    sources = {str(p.relative_to(REPO)) for p in (REPO / "csrc").rglob("*") if p.suffix in (".pyx", ".pxd")}
    assert sources == {n for n in names if n.startswith("csrc/")}, "the sdist's csrc/ is not the repo's .pyx/.pxd"
    package = {str(p.relative_to(REPO)) for p in (REPO / "src").rglob("*") if p.suffix in (".py", ".pyi")}
    missing = package - names
    assert not missing, f"missing from the sdist (run `make wheel` if they are new): {sorted(missing)}"
    # No generated C, builds or Cython annotations (.html); the web UI's page is the one .html shipped.
    assert not [n for n in names if n.endswith((".c", ".so", ".pyc"))
                or (n.endswith(".html") and "/src/duro/ui/static/" not in f"/{n}")]


def test_the_wheel_runs_the_demo_and_the_cli_without_a_compiler(venv: Venv, tmp_path: Path) -> None:
    out = venv.run(venv.python, "-c", f"import shutil; print([shutil.which(c) for c in {COMPILERS!r}])",
                   cwd=tmp_path)
    assert out.strip() == str([None] * len(COMPILERS)), f"a compiler is on the virtualenv's PATH: {out}"
    # Imported from the virtualenv, with the bundled liblmdb mapped (not the system's).
    out = venv.run(venv.python, "-c", "import duro, duro._core as c, pathlib; print(duro.__version__); "
                   "print(c.mdb.__file__); print(pathlib.Path('/proc/self/maps').read_text())", cwd=tmp_path)
    version, mdb_file, maps = out.split("\n", 2)
    assert version == VERSION
    assert mdb_file.startswith(str(venv.root)), mdb_file
    lmdb_maps = {line.split()[-1] for line in maps.splitlines() if "liblmdb" in line}
    assert lmdb_maps and all("/duro.libs/liblmdb-" in p for p in lmdb_maps), lmdb_maps

    shutil.copy(REPO / "examples" / "order_demo.py", tmp_path)
    store = tmp_path / "store"
    out = venv.run(venv.python, "order_demo.py", str(store), cwd=tmp_path, timeout=120)
    assert "[activity] ship order A-1001 ... ok" in out
    assert "approved_by='alice')" in out
    assert re.search(r"reopened the store: order-A-1001 is completed, \d+ events, same result: True", out)

    duro = str(venv.root / "bin" / "duro")
    assert venv.run(duro, "--version", cwd=tmp_path).strip() == f"duro {VERSION}"
    listed = venv.run(duro, "--store", f"lmdb://{store}", "list", cwd=tmp_path)
    assert "order-A-1001" in listed and "completed" in listed
    described = venv.run(duro, "--store", f"lmdb://{store}", "describe", "order-A-1001", cwd=tmp_path)
    assert re.search(r"type: +order_processing\n", described) and re.search(r"status: +completed\n", described)


def test_cibuildwheel_test_command_passes_against_the_wheel(venv: Venv, tmp_path: Path) -> None:
    """The smoke subset cibuildwheel runs on every wheel, run here as it runs it: from a copy of test-sources."""
    cfg = PYPROJECT["tool"]["cibuildwheel"]
    venv.run(venv.python, "-m", "pip", "install", "-q", "--only-binary", ":all:", *cfg["test-requires"],
             cwd=tmp_path)
    for src in cfg["test-sources"]:
        if (REPO / src).is_dir():
            shutil.copytree(REPO / src, tmp_path / src, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / src, tmp_path / src)
    argv = shlex.split(cfg["test-command"])
    assert argv[0] == "python"
    env = {**venv.env, **cfg.get("test-environment", {})}
    out = venv.run(venv.python, *argv[1:], cwd=tmp_path, env=env, timeout=600)
    assert re.search(r"\d+ passed", out), out[-2000:]
