"""A real systemd for tests: systemd-nspawn booted over a throwaway overlay of the host's root.

The machines that run the tests do not run systemd as PID 1, so a service cannot be
installed and started on them directly. ``Machine`` boots one in a container instead::

    with Machine(tmp_path, bind_ro={str(src): "/mnt/src"}) as m:
        m.run("/mnt/src/install.sh --cpu-only")
        assert m.run("systemctl is-active offgrid-llm").stdout.strip() == "active"

How (DESIGN.md, "Service, security and LAN facts"):

- the container's root is an overlay mounted on ``tmp/root``: the host's ``/`` read-only
  below, ``tmp/upper`` above, so the container sees the host's programs (python3, systemd,
  curl) and everything it writes lands in ``tmp/upper``, thrown away on exit. ``-D /`` is
  refused by nspawn; only what lies on the root file system shows through (another mount,
  e.g. a checkout on its own volume, does not: bind what the test needs);
- the host's enabled units are masked in the overlay (``ln -s /dev/null``), so the container
  boots only systemd's own units and what the test installs;
- ``systemd-nspawn -b --register=no --keep-unit --link-journal=no --console=pipe``: there is
  no machined or system bus on the host (without ``--keep-unit`` nspawn fails asking the bus
  for a scope);
- ``--private-network`` unless ``network=True``: only a loopback, no route out, and no
  collision with servers on the host's 127.0.0.1. ``network=True`` adds a user-mode network
  to the outside (``slirp4netns``, its own loopback still private);
- commands run in the container's namespaces with ``nsenter -t <its systemd> -a`` (there is
  no machined for ``machinectl shell``) and a clean environment: no ``PIP_*`` or
  ``OFFGRID_*`` of the test process leaks in;
- ``hide=`` paths are absent in the container (overlay whiteouts made before the mount):
  ``local_pip_sources()`` lists this machine's local pip sources (config files, find-links
  folders, ``file://`` indexes, constraints) and caches, which would otherwise let an
  "offline" install succeed for the wrong reason.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import stat
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from conftest import wait_for

__all__ = ["Machine", "local_pip_sources", "nspawn_available"]

CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 60.0
POWEROFF_TIMEOUT = 30.0
SLIRP = ("slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback")


def nspawn_available() -> str | None:
    """None if machines can be booted here, else why not (for ``pytest.skip``).

    Needs root, systemd-nspawn (Debian: systemd-container), nsenter, systemd itself and
    overlayfs. test.sh installs systemd-container where it is missing, so in CI (root)
    this returns None.
    """
    if os.geteuid() != 0:
        return "booting a container needs root"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    if not Path("/lib/systemd/systemd").exists() and not Path("/usr/lib/systemd/systemd").exists():
        return "systemd is not installed (apt-get install systemd)"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError as exc:
        return f"cannot read /proc/filesystems: {exc}"
    if not re.search(r"\boverlay$", filesystems, re.MULTILINE):
        return "the kernel has no overlayfs"
    return None


@functools.cache
def local_pip_sources() -> tuple[str, ...]:
    """Where pip on this machine finds packages without the network, and its caches.

    The config files ``pip config debug`` lists, the folders and ``file://`` indexes they
    and ``PIP_*`` variables name (find-links, index-url, extra-index-url, constraint), and
    the usual cache folders. Only paths that exist.
    """
    found: set[str] = {
        "/etc/pip.conf",
        "/etc/xdg/pip",
        "/root/.pip",
        "/root/.config/pip",
        "/root/.cache/pip",
    }
    text = ""
    for python in ("/usr/bin/python3", shutil.which("python3")):
        if python:
            done = subprocess.run(
                [python, "-m", "pip", "config", "debug"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            text += done.stdout
    values = re.findall(r"^\s+(\S+), exists: True$", text, re.MULTILINE)
    values += re.findall(
        r"(?:find-links|index-url|constraint|requirement)[:=]\s*'?(.+?)'?$", text, re.MULTILINE
    )
    sources = ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT")
    values += [os.environ[k] for k in sources if k in os.environ]
    for value in values:
        for item in value.split():
            path = item.removeprefix("file://")
            if path.startswith("/") and os.path.lexists(path):
                found.add(path)
    paths = sorted(p for p in found if os.path.lexists(p))
    return tuple(p for p in paths if not any(p.startswith(q + "/") for q in paths))


class Machine:
    """A real systemd booted with systemd-nspawn over a throwaway overlay of the host's root."""

    def __init__(
        self,
        tmp: Path,
        *,
        binds: Mapping[str, str] = {},
        bind_ro: Mapping[str, str] = {},
        network: bool = False,
        hide: Iterable[str] = (),
    ) -> None:
        """``binds``/``bind_ro``: host path → path inside (read-write / read-only).

        ``network`` False: ``--private-network`` (loopback only, no route out). ``hide``:
        host paths that do not exist inside (e.g. ``local_pip_sources()``).
        """
        self.tmp = tmp
        self.root = tmp / "root"
        self.upper = tmp / "upper"
        self.work = tmp / "work"
        self.console = tmp / "console.log"
        self.name = f"offgrid-{uuid.uuid4().hex[:12]}"
        self.binds = dict(binds)
        self.bind_ro = dict(bind_ro)
        self.network = network
        self.hide = [os.path.normpath(p) for p in hide]
        self.pid = 0  # the container's systemd, as the host numbers it
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._slirp: subprocess.Popen[bytes] | None = None
        self._mounted = False

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Machine:
        try:
            self._mount()
            self._mask_host_units()
            self._boot()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._teardown()

    def _mount(self) -> None:
        for folder in (self.root, self.upper, self.work):
            folder.mkdir(parents=True)
        for path in self.hide:
            self._whiteout(path)
        options = f"lowerdir=/,upperdir={self.upper},workdir={self.work}"
        _sh(["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)])
        self._mounted = True

    def _whiteout(self, path: str) -> None:
        """Make ``path`` absent in the overlay: a 0/0 character device in the upper layer.

        Done before the mount (the upper layer must not change under a mounted overlay). The
        parent folders are made in the upper layer with the lower ones' owner and mode, and
        resolved first: a folder over a lower symlink (/lib → usr/lib) would shadow it.
        """
        if not os.path.lexists(path):
            return
        parent = Path(os.path.realpath(os.path.dirname(path)))
        lower, upper = Path("/"), self.upper
        for part in parent.relative_to("/").parts:
            lower, upper = lower / part, upper / part
            if not upper.exists():
                st = lower.stat()
                upper.mkdir()
                os.chown(upper, st.st_uid, st.st_gid)
                upper.chmod(stat.S_IMODE(st.st_mode))
        os.mknod(upper / os.path.basename(path), stat.S_IFCHR, os.makedev(0, 0))

    def _mask_host_units(self) -> None:
        """Mask every unit the host enabled, so only systemd's own units and ours boot."""
        system = self.root / "etc" / "systemd" / "system"
        names = {
            link.name
            for wants in Path("/etc/systemd/system").glob("*.wants")
            for link in wants.iterdir()
        } | {
            link.name
            for wants in Path("/etc/systemd/system").glob("*.requires")
            for link in wants.iterdir()
        }
        for name in names:
            unit = system / name
            if unit.is_symlink() or unit.exists():
                unit.unlink()
            unit.symlink_to("/dev/null")

    def _boot(self) -> None:
        argv = ["systemd-nspawn", "-q", "-D", str(self.root), "-b", "-M", self.name]
        argv += ["--register=no", "--keep-unit", "--link-journal=no", "--console=pipe"]
        argv.append("--private-network")
        for host, inside in self.binds.items():
            argv.append(f"--bind={host}:{inside}")
        for host, inside in self.bind_ro.items():
            argv.append(f"--bind-ro={host}:{inside}")
        with self.console.open("wb") as out:
            self._nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        self.pid = int(str(wait_for(self._leader, BOOT_TIMEOUT, "the container's systemd")))
        if self.network:
            self._start_slirp()

        def booted() -> bool:
            done = self.run("systemctl is-system-running --wait", check=False, timeout=BOOT_TIMEOUT)
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                return True
            if state in ("maintenance", "stopping"):
                raise AssertionError(f"the container booted to {state!r}:\n{self.log_tail()}")
            return False  # "offline" until systemd listens, then initializing, starting

        wait_for(booted, BOOT_TIMEOUT, "the container to finish booting")

    def _leader(self) -> int | None:
        """The container's PID 1 (a child of nspawn whose innermost pid is 1), once it runs."""
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            raise AssertionError(
                f"systemd-nspawn exited ({self._nspawn.returncode}):\n{self.log_tail()}"
            )
        try:
            children = Path(f"/proc/{self._nspawn.pid}/task/{self._nspawn.pid}/children")
            pids = children.read_text().split()
        except OSError:
            return None
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            nspid = re.search(r"^NSpid:\s+(.+)$", status, re.MULTILINE)
            if nspid and nspid.group(1).split()[-1] == "1" and comm == "systemd":
                return int(pid)
        return None

    def _start_slirp(self) -> None:
        if shutil.which("slirp4netns") is None:
            raise RuntimeError("network=True needs slirp4netns (apt-get install slirp4netns)")
        log = (self.tmp / "slirp.log").open("wb")
        with log:
            self._slirp = subprocess.Popen(
                [*SLIRP, str(self.pid), "tap0"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )

        def configured() -> bool:
            assert self._slirp is not None
            if self._slirp.poll() is not None:
                raise AssertionError(f"slirp4netns exited: {(self.tmp / 'slirp.log').read_text()}")
            return "tap0" in self.run("ip -4 route show default", check=False).stdout

        wait_for(configured, 30, "slirp4netns to give the container a network")

    def _teardown(self) -> None:
        if self._nspawn is not None and self._nspawn.poll() is None:
            if self.pid:  # systemd's "power off" request: stops every unit, then exits
                _signal(self.pid, signal.SIGRTMIN + 3)
            try:
                self._nspawn.wait(POWEROFF_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal(self._nspawn.pid, signal.SIGKILL)
                if self.pid:
                    _signal(self.pid, signal.SIGKILL)  # PID 1 gone: its namespace goes too
                self._nspawn.wait(POWEROFF_TIMEOUT)
        if self._slirp is not None:
            if self._slirp.poll() is None:
                self._slirp.terminate()
            self._slirp.wait(POWEROFF_TIMEOUT)
        if self._mounted:
            if subprocess.run(["umount", str(self.root)], capture_output=True).returncode:
                _sh(["umount", "-l", str(self.root)])  # something still holds it: detach
            self._mounted = False
        for folder in (self.root, self.upper, self.work):
            shutil.rmtree(folder, ignore_errors=True)

    # -- use ----------------------------------------------------------------------------------

    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float = 300,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``bash -c command`` inside, as root, in a clean environment (PATH, HOME, LANG).

        ``check``: raise with the output when it exits non-zero. ``timeout``: seconds, then
        the command (its whole process group) is killed and AssertionError raised.
        """
        return self._exec(["bash", "-c", command], check=check, timeout=timeout, env=env)

    def write(self, path: str, text: str) -> None:
        """Write ``text`` to ``path`` inside (its folder made if missing), as root."""
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1"'
        self._exec(["bash", "-c", script, "write", path], check=True, timeout=60, stdin=text)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the container's console, for failure messages."""
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console log)"

    def _exec(
        self,
        argv: list[str],
        *,
        check: bool,
        timeout: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        assert self.pid, "the machine is not running"
        clean = {"PATH": CLEAN_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb"}
        clean.update(env or {})
        full = ["nsenter", "-t", str(self.pid), "-a", "env", "-i"]
        full += [f"{k}={v}" for k, v in clean.items()] + argv
        proc = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={"PATH": CLEAN_PATH},
        )
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal(-proc.pid, signal.SIGKILL)  # nsenter forks into the pid namespace: the group
            out, err = proc.communicate()
            raise AssertionError(
                f"timed out after {timeout} s in the container: {argv}\n{out}\n{err}"
            ) from None
        done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and done.returncode != 0:
            raise AssertionError(
                f"exit status {done.returncode} in the container: {argv}\n"
                f"--- stdout\n{out}\n--- stderr\n{err}"
            )
        return done


def _sh(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def _signal(pid: int, sig: int) -> None:
    try:
        if pid < 0:
            os.killpg(-pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass
