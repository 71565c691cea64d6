"""The compiled core of duro (Cython): the event codec, the LMDB history log and the replay matcher."""

try:
    from duro._core import codec, log, mdb, replay
except ImportError as exc:  # pragma: no cover - exercised only on an unbuilt checkout
    raise ImportError(
        "duro's compiled core (duro._core) is not built. Run `make install`, or "
        "`pip install -e .` or `python setup.py build_ext --inplace` from the source tree. "
        f"(Import failed with: {exc})"
    ) from exc

IMPLEMENTATION = "cython"
CYTHON_VERSION: str = codec.CYTHON_VERSION

__all__ = ["CYTHON_VERSION", "IMPLEMENTATION", "codec", "log", "mdb", "replay"]
