"""Pipewarden as users install it: a wheel of a source tree, in a fresh virtual environment.

`copy_tree` copies what a clone of the repository would hold after a commit of the working tree
(the files git tracks, as they are now, and the untracked files it does not ignore); `build`
makes a wheel of a tree with pip, as `pip install .` does (build isolation: the build requirements
of pyproject.toml, so mypyc and a C compiler compile the hot path where they can); `install` puts
a wheel and its dependencies into a new virtual environment. `installed` does all three into a
directory and reuses what it built there while the tree is unchanged. The ingest section runs the
installed server beside the development tree's, and tests/test_package.py checks the install.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["REPO", "build", "copy_tree", "install", "installed", "site_packages"]

REPO = Path(__file__).resolve().parent.parent
"""The repository whose tree is built."""


def _run(argv: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
    """Run `argv`, its output appended to `log`; raise with the log's end when it fails."""
    with log.open("ab") as out:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        command = " ".join(argv[:5])
        raise RuntimeError(f"{command} ... failed ({done.returncode}); {log} ends:\n{tail}")


def _files(repo: Path) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    return sorted(name for name in listed.decode().split("\0") if name)


def copy_tree(dest: Path, repo: Path = REPO) -> str:
    """Copy the tree of `repo` (see the module's docstring) to `dest`, links as links; return a
    digest of what was copied."""
    digest = hashlib.sha256()
    dest.mkdir(parents=True)
    for name in _files(repo):
        source = repo / name
        if not source.is_symlink() and not source.is_file():
            continue  # deleted in the working tree, not yet in the index
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            link = os.readlink(source)
            target.symlink_to(link)
            digest.update(f"{name}\0->{link}\0".encode())
        else:
            shutil.copy2(source, target)
            digest.update(f"{name}\0{source.stat().st_mode & 0o111}\0".encode())
            digest.update(hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest()


def build(tree: Path, dist: Path, log: Path, env: Mapping[str, str] | None = None) -> Path:
    """Build the wheel of `tree` into `dist` with pip (its output in `log`); return its path."""
    dist.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--wheel-dir", str(dist),
          str(tree)], log, env)  # fmt: skip
    wheels = sorted(dist.glob("pipewarden-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one wheel in {dist}, found {wheels}")
    return wheels[0]


def install(wheel: Path, venv: Path, log: Path) -> Path:
    """A new virtual environment at `venv` with `wheel` and its dependencies; return its bin/."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], log)
    python = venv / "bin" / "python"
    # This interpreter's pip installs into the new environment, from the configured index and
    # pip's cache; the new environment needs no pip of its own.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
          str(wheel)], log)  # fmt: skip
    return venv / "bin"


def site_packages(venv: Path) -> Path:
    """The site-packages directory of a virtual environment made by `install`."""
    found = list((venv / "lib").glob("python3*/site-packages"))
    if len(found) != 1:
        raise RuntimeError(f"expected one site-packages under {venv}/lib, found {found}")
    return found[0]


def installed(out: Path, repo: Path = REPO) -> Path:
    """The bin/ of a virtual environment under `out` that has a wheel of `repo`'s current tree
    installed, built and installed again only when the tree changed since the last call."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = out / "built-from"
    fresh = out / "tree.new"
    shutil.rmtree(fresh, ignore_errors=True)
    digest = copy_tree(fresh, repo)
    venv = out / "venv"
    if stamp.exists() and stamp.read_text() == digest and (venv / "bin" / "pipewarden").exists():
        shutil.rmtree(fresh)
        return venv / "bin"
    stamp.unlink(missing_ok=True)
    for old in ("tree", "dist", "venv"):
        shutil.rmtree(out / old, ignore_errors=True)
    fresh.rename(out / "tree")
    log = out / "build.log"
    log.write_bytes(b"")
    wheel = build(out / "tree", out / "dist", log)
    bin_dir = install(wheel, venv, log)
    shutil.rmtree(out / "tree")  # only the build needed it
    stamp.write_text(digest)
    return bin_dir
