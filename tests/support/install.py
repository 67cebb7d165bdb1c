"""The package as a user gets it: build an sdist, a wheel from that sdist,
install the wheel into a fresh venv, start the installed ``qmpjobd`` from
``/`` and hold one QMP exchange with it (greeting, ``qmp_capabilities``,
``query-version``), then stop it with SIGTERM.

``tests/test_install.py`` runs it without network access: the wheel is built
without build isolation, and the fresh venv borrows the test environment's
dependencies (never qmpjobd itself). CI runs ``python -m tests.support.install``,
which installs the wheel's dependencies from the package index instead
(``QMPJOBD_OFFLINE=1`` borrows them there too).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def can_build_offline() -> bool:
    """Whether this environment's setuptools can build a wheel by itself."""
    return importlib.util.find_spec("setuptools.command.bdist_wheel") is not None


def _run(*cmd: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


#: What a build or a test run leaves in the source tree; never copied.
_LEFTOVERS = (".git", ".venv", "*.egg-info", "build", "dist", "out", "__pycache__", ".*cache")


def build_sdist(out: Path) -> Path:
    """An sdist built from a copy of the source tree without earlier builds'
    leftovers (setuptools would read an old file list from them)."""
    tree = out / "tree"
    shutil.copytree(ROOT, tree, symlinks=True, ignore=shutil.ignore_patterns(*_LEFTOVERS))
    script = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    name = _run(sys.executable, "-c", script, out, cwd=tree).strip().splitlines()[-1]
    return out / name


def build_wheel(sdist: Path, out: Path) -> Path:
    """A wheel built from the unpacked *sdist* (so the sdist must be complete)."""
    with tarfile.open(sdist) as tar:
        tar.extractall(out / "src", filter="data")
    (tree,) = (out / "src").iterdir()
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", out / "dist", tree)  # fmt: skip
    (wheel,) = (out / "dist").glob("qmpjobd-*.whl")
    return wheel


def install(wheel: Path, target: Path, *, offline: bool) -> Path:
    """A fresh venv at *target* with *wheel* installed; returns its ``bin``."""
    venv.EnvBuilder(with_pip=not offline).create(target)
    python = target / "bin" / "python"
    if not offline:
        _run(python, "-m", "pip", "install", "-q", wheel)
        return target / "bin"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel)
    # The dependencies come from this environment: a plain path entry, so the
    # .pth files there (the editable install of qmpjobd among them) stay unread.
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run(python, "-c", purelib).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_borrowed_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    return target / "bin"


def exchange(bindir: Path, workdir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Start the installed daemon from ``/``, talk to it, stop it with SIGTERM."""
    where = _run(bindir / "python", "-c", "import qmpjobd; print(qmpjobd.__file__)", cwd=Path("/"))
    sock, pidfile = workdir / "qmp.sock", workdir / "qmpjobd.pid"
    daemon = subprocess.Popen(
        [bindir / "qmpjobd", "--socket", sock, "--pidfile", pidfile],
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + timeout
        while not pidfile.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                _, err = daemon.communicate(timeout=timeout)
                raise RuntimeError(f"the daemon did not start:\n{err.decode(errors='replace')}")
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(str(sock))
            stream = conn.makefile("rwb")
            received = [json.loads(stream.readline())]
            for request in ({"execute": "qmp_capabilities"}, {"execute": "query-version", "id": 1}):
                stream.write(json.dumps(request).encode())
                stream.flush()
                received.append(json.loads(stream.readline()))
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=timeout)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    return {
        "module": where.strip(),
        "received": received,
        "returncode": daemon.returncode,
        "stderr": stderr.decode(errors="replace"),
        "socket_left": sock.exists(),
    }


def check(workdir: Path, *, offline: bool) -> dict[str, Any]:
    """The whole round: build, install, talk. Raises AssertionError on a difference."""
    sdist = build_sdist(workdir / "sdist")
    wheel = build_wheel(sdist, workdir / "build")
    bindir = install(wheel, workdir / "venv", offline=offline)
    result = exchange(bindir, workdir)
    greeting, negotiated, version = result["received"]
    assert result["module"].startswith(str(workdir / "venv")), result["module"]
    assert greeting["QMP"]["version"]["qemu"]["major"] == 10, greeting
    assert negotiated == {"return": {}}, negotiated
    assert version["id"] == 1 and version["return"]["package"].startswith("qmpjobd "), version
    assert result["returncode"] == 0, result
    assert "Traceback" not in result["stderr"], result["stderr"]
    assert not result["socket_left"], "the socket file outlived the daemon"
    return result


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="qj-") as tmp:
        result = check(Path(tmp), offline=os.environ.get("QMPJOBD_OFFLINE") == "1")
    print("installed wheel:", json.dumps(result["received"][-1]), "; stopped by SIGTERM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
