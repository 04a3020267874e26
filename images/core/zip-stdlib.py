"""Move the pure-Python standard library into ``/usr/lib/pythonXY.zip``: its sources and
their bytecode, deflated. CPython already puts that zip on ``sys.path`` ahead of the
directory and imports from it (zipimport); tracebacks, ``inspect`` and ``pdb`` still read
the sources from it. About 15 MB less image for Debian's Python 3.11, same import speed
(docs/core-image.md). Run once, as root, in the layer that installs python3.

Stays a directory: C extensions (``lib-dynload``), the files named in ``KEEP_FILES``, and
packages that read files next to their modules (venv's activate scripts). ``apt-get install --reinstall libpython3.11-stdlib`` restores the files.
"""

import importlib.util
import os
import py_compile
import sys
import tempfile
import zipfile

STDLIB = os.path.dirname(os.__file__)
TARGET = os.path.join(os.path.dirname(STDLIB), "python{}{}.zip".format(*sys.version_info[:2]))
KEEP_DIRS = {"lib-dynload", "site-packages", "dist-packages", "__pycache__"}
# os.py: the landmark by which Python finds its prefix. py_compile.py and compileall.py:
# Debian's py3compile runs them by path when any python3-* package is installed.
KEEP_FILES = {"os.py", "py_compile.py", "compileall.py"}
DOCS = (".py", ".rst", ".txt")


def has_data(directory: str) -> bool:
    for _root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if any(not name.endswith(DOCS) for name in files):
            return True
    return False


def main() -> None:
    if os.path.exists(TARGET):
        sys.exit(f"{TARGET} exists already: not overwriting it")
    moved = []
    compiled = os.path.join(tempfile.mkdtemp(), "module.pyc")
    with zipfile.ZipFile(TARGET, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for root, dirs, files in os.walk(STDLIB):
            dirs[:] = sorted(
                d for d in dirs if d not in KEEP_DIRS and not has_data(os.path.join(root, d))
            )
            for name in sorted(files):
                path = os.path.join(root, name)
                relative = os.path.relpath(path, STDLIB)
                if not name.endswith(".py") or relative in KEEP_FILES:
                    continue
                # Unchecked hash-based bytecode: zipimport never compares it with the
                # source's zip timestamp (2-second resolution) and never recompiles it.
                py_compile.compile(
                    path,
                    cfile=compiled,
                    dfile=path,
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                )
                archive.write(path, relative)
                archive.write(compiled, relative[:-3] + ".pyc")
                moved.append(path)
    for path in moved:
        os.remove(path)
        cached = importlib.util.cache_from_source(path)
        if os.path.exists(cached):
            os.remove(cached)
    for root, _dirs, _files in os.walk(STDLIB, topdown=False):
        if root != STDLIB and not os.listdir(root):
            os.rmdir(root)
    print(f"{TARGET}: {len(moved)} modules, {os.path.getsize(TARGET) // 1024} KiB")


if __name__ == "__main__":
    main()
