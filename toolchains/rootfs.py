"""The emulated board: a Debian rootfs of the board's architecture, run through proot + qemu-user.

``ensure_rootfs`` makes the rootfs with ``mmdebstrap --variant=extract`` (no binfmt, no chroot, no
maintainer scripts run under emulation, so it works in containers) and caches it: a stamp file inside
the rootfs records the spec, and a matching stamp means the rootfs is reused without any network.
Extract mode unpacks packages and nothing else, so this module then does, on the host, the parts of the
skipped maintainer scripts a userland needs (alternatives symlinks, /etc/passwd and friends, ldconfig,
Python byte-compiling), and makes every absolute symlink relative so the tree is also a correct sysroot
for the cross-compiler.

``board_command`` / ``run_on_board`` run a program inside it (``start_on_board`` / ``stop_on_board``: in
the background, e.g. a server): ``proot -q qemu-aarch64`` gives a real chroot-like view (exec of child
programs, binds of /dev, /proc, /sys); ``qemu-aarch64 -L`` is the fallback when ptrace is unavailable,
with the limits explained at ``_qemu_command``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"

BOARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The host's kernel file systems a proot board sees (board_command's kernel_fs).
KERNEL_FS = ("/dev", "/proc", "/sys")
STAMP_NAME = ".edgekit-rootfs.json"
_STAMP_FORMAT = 1
Runner = Literal["auto", "proot", "qemu"]


class RootfsError(RuntimeError):
    """The board rootfs cannot be made or run; the message says what to do."""


@dataclass(frozen=True)
class _Arch:
    qemu: str  # qemu-user binary suffix: qemu-<qemu>
    triplet: str  # Debian multiarch triplet, $DEB_HOST_MULTIARCH in maintainer scripts
    uname: str  # `uname -m` on the board
    elf: tuple[int, int, int]  # ELF (class, data, machine) of the arch's binaries
    merged_usr_dirs: tuple[str, ...]  # the top-level dirs usrmerge turns into symlinks to /usr/<dir>


_ARCHES: dict[str, _Arch] = {
    "arm64": _Arch("aarch64", "aarch64-linux-gnu", "aarch64", (2, 1, 183), ("bin", "sbin", "lib")),
    "armhf": _Arch("arm", "arm-linux-gnueabihf", "armv7l", (1, 1, 40), ("bin", "sbin", "lib")),
    "amd64": _Arch(
        "x86_64", "x86_64-linux-gnu", "x86_64", (2, 1, 62), ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
    ),
    "i386": _Arch("i386", "i386-linux-gnu", "i686", (1, 1, 3), ("bin", "sbin", "lib", "lib64", "libx32")),
    "riscv64": _Arch("riscv64", "riscv64-linux-gnu", "riscv64", (2, 1, 243), ("bin", "sbin", "lib")),
    "ppc64el": _Arch(
        "ppc64le", "powerpc64le-linux-gnu", "ppc64le", (2, 1, 21), ("bin", "sbin", "lib", "lib64")
    ),
    "s390x": _Arch("s390x", "s390x-linux-gnu", "s390x", (2, 2, 22), ("bin", "sbin", "lib", "lib32")),
}

# The Debian package that provides each host tool, for the "install it" message.
_APT_PACKAGE = {"mmdebstrap": "mmdebstrap", "dpkg-deb": "dpkg"}

# Suites whose security archive is still named "<suite>/updates" (bullseye renamed it "-security").
_OLD_SECURITY_NAMING = frozenset({"jessie", "stretch", "buster"})


@dataclass(frozen=True)
class RootfsSpec:
    """What a board rootfs is made of; the stamp records it, so any change here means a rebuild."""

    suite: str
    debian_arch: str
    packages: tuple[str, ...]
    mirror: str = DEFAULT_MIRROR
    security_mirror: str = DEFAULT_SECURITY_MIRROR
    components: tuple[str, ...] = ("main",)
    # Also <suite>-updates and <suite>-security, as a Debian install's apt sources have, so the board gets
    # the same (security) fixes as a real one. False for suites that have neither (sid).
    updates: bool = True
    # /bin, /sbin, /lib as symlinks into /usr, as every Debian 12 install is (extract mode skips usrmerge).
    merged_usr: bool = True

    def __post_init__(self) -> None:
        # Accept lists from TOML/JSON while keeping the dataclass hashable and its stamp comparable.
        object.__setattr__(self, "packages", tuple(self.packages))
        object.__setattr__(self, "components", tuple(self.components))
        if self.debian_arch not in _ARCHES:
            raise ValueError(f"unknown Debian architecture {self.debian_arch!r}; known: {', '.join(_ARCHES)}")
        if not self.packages:
            raise ValueError("a rootfs needs at least one package")
        bad = [p for p in self.packages if not re.fullmatch(r"[a-z0-9][a-z0-9+.\-]*(:[a-z0-9]+)?", p)]
        if bad:
            raise ValueError(f"not Debian package names: {', '.join(map(repr, bad))}")

    @property
    def arch(self) -> _Arch:
        return _ARCHES[self.debian_arch]

    def apt_sources(self) -> tuple[str, ...]:
        """The one-line apt sources the rootfs is made from (and that its /etc/apt/sources.list keeps)."""
        components = " ".join(self.components)
        lines = [f"deb {self.mirror} {self.suite} {components}"]
        if self.updates:
            security = (
                f"{self.suite}/updates" if self.suite in _OLD_SECURITY_NAMING else f"{self.suite}-security"
            )
            lines.append(f"deb {self.mirror} {self.suite}-updates {components}")
            lines.append(f"deb {self.security_mirror} {security} {components}")
        return tuple(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }


# ----------------------------------------------------------------------------------------------------------
# Making the rootfs


def ensure_rootfs(
    spec: RootfsSpec, dest: Path, *, log: Callable[[str], None] = print, rebuild: bool = False
) -> Path:
    """The rootfs of ``spec`` at ``dest``: reused when its stamp matches, else made with mmdebstrap.

    The rootfs is made in a hidden sibling directory and renamed into place only when complete, so a
    failed or interrupted run leaves ``dest`` as it was. A ``dest`` made from another spec is not replaced
    unless ``rebuild`` is set (it may hold what was flashed onto the board); a directory that is not an
    EdgeKit rootfs is never replaced.
    """
    dest = Path(os.path.realpath(dest))
    stamp = rootfs_stamp(dest)
    if stamp is not None and _stamp_matches(stamp, spec):
        log(f"[rootfs] reusing {dest} ({spec.suite}/{spec.debian_arch}, made {stamp.get('made')})")
        return dest
    _check_replaceable(dest, stamp, spec, rebuild)

    _require_tools(spec)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(dest, log) as lock_fd:
        # Another process may have made it while this one waited for the lock.
        stamp = rootfs_stamp(dest)
        if stamp is not None and _stamp_matches(stamp, spec):
            log(f"[rootfs] reusing {dest}, just made by another process")
            return dest
        _check_replaceable(dest, stamp, spec, rebuild)
        _remove_stale_partials(dest, log)

        started = time.monotonic()
        partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            partial.chmod(0o755)  # mkdtemp makes it 0700, and it becomes the board's /
            with _step(
                log, f"mmdebstrap {spec.suite}/{spec.debian_arch} ({len(spec.packages)} packages asked)"
            ):
                _run_mmdebstrap(spec, partial, log, lock_fd)
            with _step(log, "finishing what extract mode skips"):
                info = _finish_rootfs(spec, partial, log)
            stamp_data = {
                "format": _STAMP_FORMAT,
                "spec": spec.to_json(),
                "made": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.monotonic() - started, 1),
                **info,
            }
            (partial / STAMP_NAME).write_text(json.dumps(stamp_data, indent=1, sort_keys=True) + "\n")
            _swap_into_place(partial, dest)
        except BaseException:
            try:
                _remove_tree(partial)
            except RootfsError as error:
                log(f"[rootfs] {error}")
            raise
    log(f"[rootfs] ready: {dest} in {time.monotonic() - started:.1f} s")
    return dest


def rootfs_stamp(rootfs: Path) -> dict[str, Any] | None:
    """What ``ensure_rootfs`` recorded about ``rootfs`` (spec, package versions, alternatives), or None."""
    try:
        data = json.loads((rootfs / STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _stamp_matches(stamp: dict[str, Any], spec: RootfsSpec) -> bool:
    return stamp.get("format") == _STAMP_FORMAT and stamp.get("spec") == spec.to_json()


def _check_replaceable(dest: Path, stamp: dict[str, Any] | None, spec: RootfsSpec, rebuild: bool) -> None:
    if not os.path.lexists(dest):
        return
    if not dest.is_dir():
        raise RootfsError(f"{dest} exists and is not a directory; remove it or choose another place")
    if stamp is None:
        if any(dest.iterdir()):
            raise RootfsError(
                f"{dest} exists, is not empty and is not an EdgeKit rootfs (no {STAMP_NAME}); "
                "EdgeKit will not replace it: remove it yourself or choose another place"
            )
        return
    if rebuild:
        return
    old = stamp.get("spec")
    new = spec.to_json()
    if isinstance(old, dict):
        changes = [f"{key}: {old.get(key)!r} -> {new[key]!r}" for key in new if old.get(key) != new[key]]
    else:
        changes = ["stamp format changed"]
    raise RootfsError(
        f"{dest} holds a rootfs made from another spec ({'; '.join(changes) or 'stamp format changed'}). "
        "It is kept, since it may hold what was flashed onto the board: pass rebuild=True "
        "(invoke device.create --board BOARD --force) to replace it, or remove it."
    )


def _require_tools(spec: RootfsSpec) -> None:
    missing = [tool for tool in ("mmdebstrap", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        packages = " ".join(_APT_PACKAGE[tool] for tool in missing)
        raise RootfsError(
            f"{', '.join(missing)} not found on PATH: making the board rootfs needs it "
            f"(apt-get install {packages})"
        )
    _choose_runner("auto", spec.arch)  # the rootfs is finished by running its ldconfig on the board


@contextlib.contextmanager
def _step(log: Callable[[str], None], what: str) -> Iterator[None]:
    log(f"[rootfs] {what} ...")
    started = time.monotonic()
    yield
    log(f"[rootfs] {what}: done in {time.monotonic() - started:.1f} s")


@contextlib.contextmanager
def _locked(dest: Path, log: Callable[[str], None]) -> Iterator[int]:
    """Holds the lock of ``dest`` and yields its file descriptor.

    Two builds (parallel test workers, two shells) must not make the same rootfs at once.
    """
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[rootfs] waiting for another process making {dest} ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield lock.fileno()


def _remove_stale_partials(dest: Path, log: Callable[[str], None]) -> None:
    # Under the lock, a partial directory can only be left by a run that was killed.
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):
        log(f"[rootfs] removing {stale.name}, left by an interrupted run")
        _remove_tree(stale)
    for stale in dest.parent.glob(f".{dest.name}.old-*"):
        _remove_tree(stale)


def _remove_tree(path: Path) -> None:
    # mmdebstrap may mount /proc, /sys or /dev inside the target; never delete through a mount.
    mounted = _mounts_under(path)
    if mounted:
        raise RootfsError(f"{path} still has mounts ({', '.join(mounted)}); unmount them, then remove {path}")
    shutil.rmtree(path, ignore_errors=True)


def _mounts_under(path: Path) -> list[str]:
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    prefix = str(path).rstrip("/") + "/"
    points = [re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in lines]
    return [point for point in points if (point + "/").startswith(prefix)]


def _swap_into_place(partial: Path, dest: Path) -> None:
    if not os.path.lexists(dest):
        os.rename(partial, dest)
        return
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
        os.rename(partial, dest)
        return
    # A rebuild: keep the old rootfs until the new one is in place, so a failure loses neither.
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, old / "rootfs")
    try:
        os.rename(partial, dest)
    except BaseException:
        os.rename(old / "rootfs", dest)
        raise
    _remove_tree(old)


def _run_mmdebstrap(spec: RootfsSpec, target: Path, log: Callable[[str], None], lock_fd: int) -> None:
    argv = [
        "mmdebstrap",
        "--variant=extract",
        f"--architectures={spec.debian_arch}",
        f"--components={','.join(spec.components)}",
        f"--include={','.join(spec.packages)}",
        # Keep the downloaded .debs: their maintainer scripts say which alternatives to set up.
        "--skip=cleanup/apt/cache",
        '--aptopt=Acquire::Retries "3"',
    ]
    if spec.merged_usr:
        # Made before extraction; mmdebstrap extracts with tar --keep-directory-symlink: files land in /usr.
        dirs = " ".join(spec.arch.merged_usr_dirs)
        argv.append(f'--setup-hook=for d in {dirs}; do ln -s "usr/$d" "$1/$d"; mkdir -p "$1/usr/$d"; done')
    argv += [spec.suite, str(target), *spec.apt_sources()]

    last: deque[str] = deque(maxlen=25)
    errors: list[str] = []  # apt's and mmdebstrap's "E:" lines: the cause, for the first line of the error
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env={**os.environ, "LC_ALL": "C.UTF-8"},
        # mmdebstrap and its tar/apt children hold the lock too: if this process is killed, they go on
        # until their next write to the closed pipe, and a new run must wait rather than delete under them.
        pass_fds=(lock_fd,),
    )
    assert process.stdout is not None
    try:
        for line in process.stdout:
            line = line.rstrip()
            if line:
                last.append(line)
                if line.startswith("E: ") and len(errors) < 3:
                    errors.append(line[3:])
                log(f"[rootfs]   mmdebstrap: {line}")
        code = process.wait()
    except BaseException:
        # SIGTERM first: mmdebstrap then unmounts what it mounted inside the target.
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    if code != 0:
        tail = "\n".join(f"    {line}" for line in last)
        cause = f" ({errors[0]})" if errors else ""
        raise RootfsError(
            f"mmdebstrap failed (exit {code}) making the {spec.suite}/{spec.debian_arch} rootfs from "
            f"{spec.mirror}{cause}: check the package names and that the mirror is reachable. "
            f"Its last lines:\n{tail}"
        )


def _finish_rootfs(spec: RootfsSpec, root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Does what the skipped maintainer scripts would have done that matters; returns facts for the stamp."""
    archives = root / "var/cache/apt/archives"
    debs = sorted(archives.glob("*.deb"))
    packages: dict[str, str] = {}
    postinsts: dict[str, str] = {}
    for deb in debs:
        control, postinst = _deb_control(deb)
        packages[control.get("Package", deb.name)] = control.get("Version", "?")
        if postinst:
            postinsts[control.get("Package", deb.name)] = postinst
    log(f"[rootfs] {len(packages)} packages extracted")

    alternatives = _install_alternatives(root, postinsts, spec.arch.triplet, log)
    # What mmdebstrap's cleanup/apt/cache would have removed.
    for deb in debs:
        deb.unlink()
    relinked = _relativize_symlinks(root)
    log(f"[rootfs] {relinked} absolute symlinks made relative (host-safe sysroot, qemu -L)")
    _seed_config(root)
    _finish_on_board(root, spec.arch, log)
    return {"packages": packages, "alternatives": alternatives}


def _deb_control(deb: Path) -> tuple[dict[str, str], str]:
    """The control fields and the postinst script (or "") of a .deb."""
    # dpkg-deb knows every compression a control archive may use (gz, xz, zst); Python's tarfile no zst.
    tar = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=False)
    if tar.returncode != 0:
        raise RootfsError(f"cannot read {deb.name}: {tar.stderr.decode(errors='replace').strip()}")
    members: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix("./")
            extracted = archive.extractfile(member) if name in ("control", "postinst") else None
            if extracted is not None:
                members[name] = extracted.read().decode(errors="replace")
    control: dict[str, str] = {}
    for line in members.get("control", "").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[:1].isspace():
            control[key] = value.strip()
    return control, members.get("postinst", "")


# --- update-alternatives ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alternative:
    """One ``update-alternatives --install`` of a maintainer script: link -> /etc/alternatives/name -> path.

    ``slaves`` are (link, name, path) of its ``--slave`` links.
    """

    link: str
    name: str
    path: str
    priority: int
    slaves: tuple[tuple[str, str, str], ...] = field(default=())


_SHELL_SEPARATORS = frozenset({";", "&&", "||", "|", "&", "(", ")", "then", "fi", "do", "done", "else"})
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def parse_alternatives(script: str, variables: Mapping[str, str]) -> list[Alternative]:
    """The ``update-alternatives --install`` commands of a shell script, with shell variables expanded.

    Variables come from ``variables`` and from the script's own literal assignments (``x=value``); a
    command that still refers to an unknown variable (or to a command substitution) is left out.
    """
    text = script.replace("\\\n", " ")
    known = dict(variables)
    for match in re.finditer(r"^\s*(?:export\s+)?([A-Za-z_]\w*)=(\S+)\s*$", text, re.M):
        with contextlib.suppress(ValueError):
            value = shlex.split(match.group(2))
            if len(value) == 1 and "$" not in value[0] and "`" not in value[0]:
                known.setdefault(match.group(1), value[0])

    found: list[Alternative] = []
    for line in text.splitlines():
        if "update-alternatives" not in line:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:
            continue
        for index, token in enumerate(tokens):
            if token.endswith("update-alternatives"):
                alternative = _parse_install(tokens[index + 1 :], known)
                if alternative is not None:
                    found.append(alternative)
    return found


def _parse_install(tokens: list[str], variables: Mapping[str, str]) -> Alternative | None:
    args: list[str] = []
    for token in tokens:
        if token in _SHELL_SEPARATORS:
            break
        args.append(token)

    def expand(word: str) -> str | None:
        expanded = _VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), "\0"), word)
        return None if "\0" in expanded or "$" in expanded or "`" in expanded else expanded

    words = [expand(arg) for arg in args]
    arity = {"--install": 4, "--slave": 3}
    master: list[str] | None = None
    priority = 0
    slaves: list[tuple[str, str, str]] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word is not None and word in arity:
            operands = [
                operand for operand in words[index + 1 : index + 1 + arity[word]] if operand is not None
            ]
            if len(operands) != arity[word]:
                return None  # cut short, or an operand with an unknown variable
            if word == "--install":
                if not operands[3].lstrip("-").isdigit():
                    return None
                master, priority = operands[:3], int(operands[3])
            else:
                slaves.append((operands[0], operands[1], operands[2]))
            index += 1 + arity[word]
        elif word in ("--altdir", "--admindir", "--instdir", "--root", "--log"):
            index += 2
        elif word in ("--quiet", "--verbose", "--force", "--debug"):
            index += 1
        else:
            return None  # another action (--remove, --set, ...) or something not understood
    if master is None:
        return None
    return Alternative(master[0], master[1], master[2], priority, tuple(slaves))


def _install_alternatives(
    root: Path, postinsts: Mapping[str, str], triplet: str, log: Callable[[str], None]
) -> dict[str, str]:
    """Sets up, as dpkg's update-alternatives would in auto mode, every alternative the packages install.

    For each name the highest-priority candidate whose file exists wins; links are relative and go through
    /etc/alternatives like dpkg's. Returns {name: chosen path}.
    """
    variables = {"DEB_HOST_MULTIARCH": triplet, "DPKG_ROOT": ""}
    candidates: dict[str, list[Alternative]] = {}
    for package in sorted(postinsts):
        script = postinsts[package].replace("$(dpkg-architecture -qDEB_HOST_MULTIARCH)", triplet)
        for alternative in parse_alternatives(script, variables):
            candidates.setdefault(alternative.name, []).append(alternative)

    chosen: dict[str, str] = {}
    for name, options in sorted(candidates.items()):
        present = [alt for alt in options if _guest_exists(root, alt.path)]
        if not present:
            continue
        best = max(present, key=lambda alt: alt.priority)
        if _alternative_link(root, best.link, best.name, best.path, log):
            chosen[name] = best.path
            log(f"[rootfs] alternative {name}: {best.link} -> {best.path}")
        for link, slave_name, path in best.slaves:
            if _guest_exists(root, path):
                _alternative_link(root, link, slave_name, path, log)
    return chosen


def _alternative_link(root: Path, link: str, name: str, path: str, log: Callable[[str], None]) -> bool:
    admin = f"/etc/alternatives/{name}"
    link_dir = _resolve_in_root(root, str(PurePosixPath(link).parent))
    host_link = root / link_dir.lstrip("/") / PurePosixPath(link).name
    if os.path.lexists(host_link) and not host_link.is_symlink():
        log(f"[rootfs] alternative {name}: {link} is a real file, left alone (as dpkg does)")
        return False
    target_dir = _resolve_in_root(root, str(PurePosixPath(path).parent))
    _replace_symlink(
        root / "etc/alternatives" / name,
        os.path.relpath(f"{target_dir}/{PurePosixPath(path).name}", "/etc/alternatives"),
    )
    host_link.parent.mkdir(parents=True, exist_ok=True)
    _replace_symlink(host_link, os.path.relpath(admin, link_dir))
    return True


def _replace_symlink(at: Path, target: str) -> None:
    at.parent.mkdir(parents=True, exist_ok=True)
    temporary = at.with_name(f".{at.name}.edgekit-new")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, at)


def _resolve_in_root(root: Path, guest: str) -> str:
    """``guest`` with every symlink followed as the board sees it (absolute targets start at ``root``)."""
    pending = deque(part for part in PurePosixPath(guest).parts if part != "/")
    resolved: list[str] = []
    hops = 0
    while pending:
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = root.joinpath(*resolved, part)
        if host.is_symlink():
            hops += 1
            if hops > 40:
                raise RootfsError(f"symlink loop at {guest} in {root}")
            target = PurePosixPath(os.readlink(host))
            if target.is_absolute():
                resolved = []
            pending.extendleft(reversed([p for p in target.parts if p != "/"]))
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


def _guest_exists(root: Path, guest: str) -> bool:
    return (root / _resolve_in_root(root, guest).lstrip("/")).exists()


# --- the rest of the skipped maintainer-script work ------------------------------------------------------


def _relativize_symlinks(root: Path) -> int:
    """Rewrites absolute symlinks as relative ones; returns how many.

    Debian ships links like /usr/lib/<triplet>/libm.so -> /lib/<triplet>/libm.so.6. Seen from the host
    (the cross-compiler's sysroot, qemu -L) they point at the host's own files: the classic sysroot bug.
    Relative, they mean the same on the board and inside the tree. /dev, /proc and /sys point at kernel
    file systems and are left alone.
    """
    count = 0
    for directory, dirnames, filenames in os.walk(root):
        relative = os.path.relpath(directory, root)
        here = "/" if relative == "." else f"/{relative}"
        if here == "/":
            dirnames[:] = [d for d in dirnames if d not in ("dev", "proc", "sys")]
        for name in (*dirnames, *filenames):
            host = Path(directory, name)
            if not host.is_symlink():
                continue
            target = os.readlink(host)
            if target.startswith("/"):
                _replace_symlink(host, os.path.relpath(target, here))
                count += 1
    return count


def _seed_config(root: Path) -> None:
    """Files and directories that base-files, base-passwd, libc-bin and python3.X postinsts would make."""
    for tmp in ("tmp", "var/tmp"):
        (root / tmp).mkdir(parents=True, exist_ok=True)
        (root / tmp).chmod(0o1777)
    (root / "root").mkdir(mode=0o700, exist_ok=True)
    # From the packages' templates when they are installed, else the minimum that id/getent/sockets need.
    templates = {
        "etc/passwd": (
            "usr/share/base-passwd/passwd.master",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        "etc/group": ("usr/share/base-passwd/group.master", "root:x:0:\nnogroup:x:65534:\n"),
        "etc/nsswitch.conf": (
            "usr/share/libc-bin/nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\n"
            "hosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n",
        ),
        "etc/hosts": ("", "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"),
        "etc/profile": ("usr/share/base-files/profile", ""),
        "root/.profile": ("usr/share/base-files/dot.profile", ""),
        "root/.bashrc": ("usr/share/base-files/dot.bashrc", ""),
    }
    for name, (template, fallback) in templates.items():
        target = root / name
        if os.path.lexists(target):
            continue
        if template and (root / template).is_file():
            shutil.copy2(root / template, target)
        elif fallback:
            target.write_text(fallback)
    for local in ("bin", "sbin", "lib", "include", "share", "src", "etc"):
        (root / "usr/local" / local).mkdir(parents=True, exist_ok=True)
    # Where pip and EdgeKit's flash install Python packages; site.py only adds directories that exist.
    for stdlib in (root / "usr/lib").glob("python3.*/os.py"):
        (root / "usr/local/lib" / stdlib.parent.name / "dist-packages").mkdir(parents=True, exist_ok=True)


def _finish_on_board(root: Path, arch: _Arch, log: Callable[[str], None]) -> None:
    """Runs the board's ldconfig (libc-bin's trigger), checks the board runs, byte-compiles its Python."""
    runner = _choose_runner("auto", arch)
    # /etc/ld.so.conf.d adds directories (e.g. /usr/local/lib) that only the cache makes searchable.
    if _guest_exists(root, "/sbin/ldconfig"):
        if runner == "proot":
            argv = ["/sbin/ldconfig"]
        else:
            # Under qemu -L a file the rootfs does not have yet is created on the host: name the cache by
            # its host path so it can only land inside the rootfs, and let ldconfig make no links.
            argv = [
                "/sbin/ldconfig",
                "-X",
                "-C",
                str(root / "etc/ld.so.cache"),
                "-f",
                str(root / "etc/ld.so.conf"),
            ]
        result = run_on_board(root, argv, runner=runner, timeout=300)
        if result.returncode != 0:
            raise RootfsError(
                f"ldconfig failed on the board ({runner}): {result.stderr.decode(errors='replace')}"
            )
        log("[rootfs] ld.so.cache made")
    else:
        log("[rootfs] no ldconfig in the rootfs (libc-bin not asked for): no ld.so.cache")
    if _guest_exists(root, "/usr/bin/uname"):
        machine = run_on_board(root, ["uname", "-m"], runner=runner, timeout=120)
        if machine.stdout.decode(errors="replace").strip() != arch.uname:
            raise RootfsError(
                f"the board does not run as {arch.uname} ({runner}): uname -m said {machine.stdout!r}, "
                f"{machine.stderr.decode(errors='replace').strip()}"
            )
        log(f"[rootfs] the board runs: uname -m = {arch.uname} ({runner})")
    _byte_compile(root, arch, runner, log)


def _byte_compile(root: Path, arch: _Arch, runner: str, log: Callable[[str], None]) -> None:
    # The py3compile the python3-* postinsts run: without it every first import compiles (numpy: 4.8 s
    # instead of 1.2 s under emulation) and a read-only board could never cache.
    stdlibs = sorted(f"/usr/lib/{os_py.parent.name}" for os_py in (root / "usr/lib").glob("python3.*/os.py"))
    if not stdlibs or not _guest_exists(root, "/usr/bin/python3"):
        return
    if runner != "proot":
        # qemu -L would create the __pycache__ directories on the host (see _qemu_command).
        log("[rootfs] Python left uncompiled: byte-compiling needs the proot runner")
        return
    folders = [
        *stdlibs,
        *(["/usr/lib/python3/dist-packages"] if _guest_exists(root, "/usr/lib/python3") else []),
    ]
    with _step(log, f"byte-compiling Python ({', '.join(folders)})"):
        result = run_on_board(
            root, ["python3", "-m", "compileall", "-q", "-j0", *folders], runner="proot", timeout=1800
        )
    if result.returncode != 0:
        failed = result.stdout.decode(errors="replace")[-500:]
        log(f"[rootfs] some Python files did not compile (harmless): {failed}")


# ----------------------------------------------------------------------------------------------------------
# Running programs on the board


def board_command(
    rootfs: Path,
    argv: Sequence[str],
    *,
    cwd: str = "/",
    env: Mapping[str, str] | None = None,
    binds: Sequence[tuple[str | Path, str]] = (),
    runner: Runner = "auto",
    qemu_args: Sequence[str] = (),
    kernel_fs: Sequence[str] = KERNEL_FS,
) -> list[str]:
    """The host command that runs ``argv`` on the board: inside ``rootfs``, emulated, in a clean environment.

    The environment is only PATH, HOME=/root, LANG=C.UTF-8 and ``env`` (plus PWD, set by proot). ``binds``
    are (host path, board path) pairs made visible on the board (proot only). ``runner`` picks proot or
    qemu -L; "auto" is proot when it works here, else qemu -L (or $EDGEKIT_BOARD_RUNNER). ``qemu_args``
    go to every qemu-user the program (and, under proot, each program it execs) runs in, e.g. a TCG
    plugin; under proot the paths in them are board paths (qemu's own file accesses are translated too)
    and they may not contain whitespace (proot splits its -q command on it). ``kernel_fs`` are the host's
    kernel file systems bound into the board (proot only); leave one out to run as in a root without it,
    e.g. ("/dev", "/proc"): no /sys, where XNNPACK's cpuinfo fails (tests/test_wheel.py).
    """
    if not argv:
        raise ValueError("argv is empty")
    if not cwd.startswith("/"):
        raise ValueError(f"cwd must be an absolute path on the board, not {cwd!r}")
    rootfs = Path(os.path.abspath(rootfs))
    arch = _rootfs_arch(rootfs)
    chosen = _choose_runner(runner, arch)
    variables = {"PATH": BOARD_PATH, "HOME": "/root", "LANG": "C.UTF-8"}
    if chosen == "qemu":
        variables["PYTHONDONTWRITEBYTECODE"] = "1"  # else __pycache__ dirs could be made on the host
    variables.update(env or {})
    for name in variables:
        if not name or "=" in name:
            raise ValueError(f"bad environment variable name {name!r}")
    assignments = [f"{name}={value}" for name, value in variables.items()]
    # The host's env(1) starts the runner with nothing inherited: the board sees no host variables.
    host_env = shutil.which("env") or "/usr/bin/env"
    if chosen == "proot":
        proot = shutil.which("proot") or "proot"
        qemu = None if _is_native(arch) else _qemu_binary(arch)
        command = [host_env, "-i", *assignments, proot]
        if qemu is not None:
            if any(not arg or any(c.isspace() for c in arg) for arg in qemu_args):
                raise ValueError(f"qemu_args must be non-empty words without whitespace: {list(qemu_args)}")
            command += ["-q", " ".join([qemu, *qemu_args])]
        elif qemu_args:
            raise RootfsError("qemu_args given, but this board runs natively here (no qemu)")
        command += ["-r", str(rootfs), "-w", cwd]
        # The kernel file systems: devices (null, urandom, shm for memfd/POSIX shm, pts), /proc (ps,
        # /proc/self/*, cpuinfo) and /sys (cpu topology for thread counts).
        for shared in kernel_fs:
            command += ["-b", shared]
        for host_path, board_path in binds:
            command += ["-b", f"{os.path.abspath(host_path)}:{board_path}"]
        if os.geteuid() != 0:
            command.append("-0")  # look like root, as the board's login does
        return [*command, *argv]
    if binds:
        raise RootfsError("binds need proot; qemu -L sees the host's own paths wherever the rootfs has none")
    if tuple(kernel_fs) != KERNEL_FS:
        raise RootfsError("kernel_fs needs proot; qemu -L always sees the host's /dev, /proc and /sys")
    chdir = f"--chdir={rootfs / cwd.lstrip('/')}"
    return [
        host_env,
        "-i",
        chdir,
        *assignments,
        *_qemu_command(rootfs, arch, argv, variables["PATH"], qemu_args),
    ]


def run_on_board(
    rootfs: Path,
    argv: Sequence[str],
    *,
    cwd: str = "/",
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    timeout: float | None = None,
    capture: bool = True,
    check: bool = False,
    binds: Sequence[tuple[str | Path, str]] = (),
    runner: Runner = "auto",
    qemu_args: Sequence[str] = (),
    kernel_fs: Sequence[str] = KERNEL_FS,
) -> subprocess.CompletedProcess[bytes]:
    """Runs ``argv`` on the board and waits for it (see ``board_command``).

    stdin is ``input``, or empty: a board program never reads the host's terminal. On timeout the
    emulator and everything it started are killed, then ``subprocess.TimeoutExpired`` is raised.
    """
    pipe = subprocess.PIPE if capture else None
    process = start_on_board(
        rootfs,
        argv,
        cwd=cwd,
        env=env,
        binds=binds,
        runner=runner,
        qemu_args=qemu_args,
        kernel_fs=kernel_fs,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=pipe,
        stderr=pipe,
    )
    command = process.args
    try:
        out, err = process.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        out, err = process.communicate()
        raise subprocess.TimeoutExpired(command, timeout or 0, out, err) from None
    except BaseException:
        _kill_group(process)
        process.wait()
        raise
    result = subprocess.CompletedProcess(command, process.returncode, out, err)
    if check:
        result.check_returncode()
    return result


def start_on_board(
    rootfs: Path,
    argv: Sequence[str],
    *,
    cwd: str = "/",
    env: Mapping[str, str] | None = None,
    binds: Sequence[tuple[str | Path, str]] = (),
    runner: Runner = "auto",
    qemu_args: Sequence[str] = (),
    kernel_fs: Sequence[str] = KERNEL_FS,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Starts ``argv`` on the board and returns at once (see ``board_command``): for servers and other
    programs that run while the host does something else. ``run_on_board`` is this and a wait.

    The emulator runs in its own process group, so a timeout or Ctrl-C can reach the emulated children
    too (proot 5.1 has no --kill-on-exit, and a killed proot would leave its tracees running untraced).
    Stop it with ``stop_on_board``: a signal to the Popen's process alone (proot) is not passed on to
    the program it runs.
    """
    command = board_command(
        rootfs, argv, cwd=cwd, env=env, binds=binds, runner=runner, qemu_args=qemu_args, kernel_fs=kernel_fs
    )
    return subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=stderr, start_new_session=True)


def stop_on_board(
    process: subprocess.Popen[bytes], *, sig: int = signal.SIGINT, timeout: float = 10.0
) -> int:
    """Stops a program ``start_on_board`` started: ``sig`` (default SIGINT, as Ctrl-C) to its whole
    process group, then SIGKILL to the group if it has not ended after ``timeout`` seconds. Returns its
    exit status (negative: the signal that ended it, as Popen.returncode)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
    _kill_group(process)  # after the timeout, or what the program left running in its group
    process.wait()
    return process.returncode


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _qemu_command(
    rootfs: Path, arch: _Arch, argv: Sequence[str], path: str, qemu_args: Sequence[str] = ()
) -> list[str]:
    """``qemu-<arch> -L rootfs``: the fallback for when proot cannot ptrace (e.g. seccomp-filtered sandboxes).

    Its limits, all because qemu-user only redirects the paths that exist under the -L prefix and nothing
    else: a program that execs another (a shell running a pipeline, Python's subprocess) runs the *host's*
    binary, or fails, since there is no binfmt_misc registration; a file the program creates where the
    rootfs has none lands on the host (even /tmp/x); it sees the host's /proc, /dev and network, and its
    cwd is the host path of the board directory. So it suits single programs that read the board (python3
    -c, a test binary); anything that writes or spawns must use proot.
    """
    emulator = [_qemu_binary(arch), *qemu_args, "-L", str(rootfs)]
    program = argv[0]
    guest = program if "/" in program else _which_in_root(rootfs, program, path)
    host = rootfs / _resolve_in_root(rootfs, guest).lstrip("/")
    try:
        with open(host, "rb") as file:
            head = file.read(256)
    except OSError as error:
        raise RootfsError(f"{guest}: cannot run it on the board: {error.strerror}") from None
    # qemu-user loads ELF files only: run a script's interpreter from its #! line, as the kernel would.
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].decode(errors="replace").split(None, 1)
        if not words:
            raise RootfsError(f"{guest} on the board has an empty #! line")
        interpreter = rootfs / _resolve_in_root(rootfs, words[0]).lstrip("/")
        return [*emulator, "-0", words[0], str(interpreter), *words[1:], guest, *argv[1:]]
    # -0: the program sees its board path as argv[0], not the host path qemu was given.
    return [*emulator, "-0", program, str(host), *argv[1:]]


def _which_in_root(rootfs: Path, program: str, path: str) -> str:
    for directory in path.split(":"):
        guest = f"{directory.rstrip('/')}/{program}"
        host = rootfs / _resolve_in_root(rootfs, guest).lstrip("/")
        if host.is_file() and os.access(host, os.X_OK):
            return guest
    raise RootfsError(f"{program}: not found on the board's PATH ({path}) in {rootfs}")


def _rootfs_arch(rootfs: Path) -> _Arch:
    """The architecture of the rootfs, from the ELF header of its /usr/bin/env."""
    probe = rootfs / _resolve_in_root(rootfs, "/usr/bin/env").lstrip("/")
    try:
        with open(probe, "rb") as file:
            header = file.read(20)
    except OSError as error:
        raise RootfsError(f"{rootfs} is not a board rootfs (no /usr/bin/env: {error.strerror})") from None
    if header[:4] != b"\x7fELF":
        raise RootfsError(f"{rootfs}/usr/bin/env is not an ELF program")
    machine = int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")
    for arch in _ARCHES.values():
        if arch.elf == (header[4], header[5], machine):
            return arch
    raise RootfsError(f"{rootfs}: unknown ELF machine {machine} (class {header[4]}, data {header[5]})")


def _is_native(arch: _Arch) -> bool:
    return platform.machine() == arch.uname


def _qemu_binary(arch: _Arch) -> str:
    qemu = shutil.which(f"qemu-{arch.qemu}") or shutil.which(f"qemu-{arch.qemu}-static")
    if qemu is None:
        raise RootfsError(
            f"qemu-{arch.qemu} not found on PATH: the {arch.uname} board is emulated with qemu-user "
            "(apt-get install qemu-user, or qemu-user-static)"
        )
    return qemu


def _choose_runner(runner: Runner, arch: _Arch) -> Literal["proot", "qemu"]:
    """The runner to use; RootfsError naming the packages to install when a tool is missing.

    A missing proot is an error (installing it is the fix); qemu -L is chosen by "auto" only when proot
    is installed but cannot work here (no ptrace), since the fallback is much weaker (see _qemu_command).
    """
    if runner == "auto":
        forced = os.environ.get("EDGEKIT_BOARD_RUNNER", "")
        if forced == "proot":
            runner = "proot"
        elif forced == "qemu":
            runner = "qemu"
    native = _is_native(arch)
    if runner == "qemu":
        if native:
            raise RootfsError("the qemu -L runner is for emulated boards; a native rootfs runs under proot")
        _qemu_binary(arch)
        return "qemu"
    proot = shutil.which("proot")
    missing = [] if proot else ["proot"]
    if not native and not (shutil.which(f"qemu-{arch.qemu}") or shutil.which(f"qemu-{arch.qemu}-static")):
        missing.append(f"qemu-{arch.qemu}")
    if missing:
        packages = " ".join("proot" if tool == "proot" else "qemu-user" for tool in missing)
        raise RootfsError(
            f"{' and '.join(missing)} not found on PATH: the {arch.uname} board runs under proot"
            f"{'' if native else ' and qemu-user'} (apt-get install {packages})"
        )
    assert proot is not None
    works, why = _proot_works(proot)
    if works:
        return "proot"
    if runner == "proot" or native:
        raise RootfsError(f"proot cannot run programs here ({why})")
    _warn_fallback(why)
    return "qemu"


@functools.cache
def _warn_fallback(why: str) -> None:
    warnings.warn(
        f"proot cannot run programs here ({why}): the emulated board falls back to qemu-user -L, which "
        "cannot run child programs as the board's and writes new files to the host's paths",
        RuntimeWarning,
        stacklevel=4,
    )


@functools.cache
def _proot_works(proot: str) -> tuple[bool, str]:
    # proot needs ptrace (blocked by some container seccomp profiles and by kernel.yama.ptrace_scope=3).
    try:
        probe = subprocess.run([proot, "-r", "/", "/bin/true"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return False, str(error)
    if probe.returncode != 0:
        return False, (probe.stderr.strip() or f"exit {probe.returncode}").splitlines()[-1]
    return True, ""
