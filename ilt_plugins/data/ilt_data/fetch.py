"""Fetching a recipe's pinned archive from a package registry with its ordinary client, hash-checked.

A :class:`Source` names one pinned archive on a package registry (PyPI through ``python -m pip
download``, npm through ``npm pack``: the ordinary clients a user already has). :func:`fetch_source`
downloads it and checks its SHA-256 (pip checks it too, in hash-checking mode, before it runs anything
from an sdist); a failed download is one line that says what to fetch and how.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ilt_core.errors import ILTError
from ilt_core.files import sha256_file

NPM_REGISTRY = "https://registry.npmjs.org"
PIN_FILE = ".ilt-pin.txt"


def _has_setuptools() -> bool:
    return importlib.util.find_spec("setuptools") is not None


@dataclass(frozen=True)
class Source:
    """One pinned archive on a package registry.

    ``kind`` is ``"sdist"`` or ``"wheel"`` (PyPI, fetched with pip) or ``"npm"`` (fetched with
    ``npm pack``). ``filename`` is the archive's exact file name; ``sha256`` the hash observed when
    the recipe was written: any other bytes are refused.
    """

    kind: str
    package: str
    version: str
    filename: str
    sha256: str
    member: str  # the file read out of the archive

    @property
    def registry(self) -> str:
        return "npm" if self.kind == "npm" else "PyPI"

    @property
    def requirement(self) -> str:
        return f"{self.package}@{self.version}" if self.kind == "npm" else f"{self.package}=={self.version}"

    @property
    def pin_line(self) -> str:
        """The pip requirement line with the pinned hash (pip's hash-checking mode)."""
        return f"{self.requirement} --hash=sha256:{self.sha256}"

    def fetch_command(self, dest: Path | str) -> list[str]:
        """The command that downloads the archive into ``dest`` (run with ``cwd=dest``).

        For PyPI it reads ``dest/.ilt-pin.txt`` (holding :attr:`pin_line`, written by
        :func:`fetch_archive`): with ``--require-hashes`` pip checks the archive's hash *before*
        it runs anything from an sdist (pip prepares an sdist's metadata with its setup.py).
        """
        if self.kind == "npm":
            # cwd is the destination; --pack-destination needs npm >= 7.18, cwd works everywhere.
            return ["npm", "pack", self.requirement]
        binary = ["--no-binary", ":all:"] if self.kind == "sdist" else ["--only-binary", ":all:"]
        # With setuptools at hand, skip the isolated build env: pip would otherwise download and
        # install setuptools only to read the sdist's metadata (a second fetch, and its time).
        isolation = ["--no-build-isolation"] if self.kind == "sdist" and _has_setuptools() else []
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            *binary,
            *isolation,
            "--require-hashes",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-r",
            str(Path(dest) / PIN_FILE),
            "-d",
            str(dest),
        ]

    @property
    def npm_tarball_url(self) -> str:
        """The registry's public tarball address (npm's own layout: /<name>/-/<name>-<version>.tgz)."""
        return f"{NPM_REGISTRY}/{self.package}/-/{self.package}-{self.version}.tgz"

    def manual_hint(self) -> str:
        """How a user gets the archive by hand, on any machine that reaches the registry."""
        if self.kind == "npm":
            return f"`npm pack {self.requirement}` (or download {self.npm_tarball_url})"
        binary = "--no-binary :all:" if self.kind == "sdist" else "--only-binary :all:"
        return f"`python -m pip download --no-deps {binary} {self.requirement} -d DIR`"

    def __str__(self) -> str:
        return f"{self.registry} {self.requirement} ({self.kind} {self.filename}) :: {self.member}"

    def as_dict(self) -> dict[str, str]:
        return {
            "registry": self.registry,
            "kind": self.kind,
            "package": self.package,
            "version": self.version,
            "filename": self.filename,
            "sha256": self.sha256,
            "member": self.member,
        }


def say(progress: bool, message: str) -> None:
    """Progress goes to stderr so that stdout stays clean for whatever the CLI prints."""
    if progress:
        print(f"[ilt data] {message}", file=sys.stderr, flush=True)


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a registry client (the one seam tests replace to simulate a network failure)."""
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def _fetch_failed(name: str, source: Source, why: str) -> ILTError:
    return ILTError(
        f"could not fetch {source.requirement} ({source.filename}) from {source.registry} for data recipe "
        f"{name!r}: {why}; check the network and your {'npm' if source.kind == 'npm' else 'pip'} "
        f"index settings, or fetch it on a machine that has the registry with {source.manual_hint()} "
        f"and pass the file: prepare({name!r}, archive=PATH) / `ilt data prepare {name} --archive PATH`"
    )


def _download_url(name: str, source: Source, url: str, target: Path, progress: bool) -> Path:
    """Fetch ``url`` into ``target`` (used for npm tarballs when the npm client is not installed)."""
    say(progress, f"npm not found; fetching {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as handle:
            shutil.copyfileobj(response, handle)
    except (urllib.error.URLError, OSError) as exc:
        raise _fetch_failed(name, source, f"downloading {url} failed ({getattr(exc, 'reason', exc)})") from exc
    return target


def fetch_source(name: str, source: Source, dest_dir: Path, progress: bool = True) -> Path:
    """Download ``source`` (of data recipe ``name``) into ``dest_dir`` with the registry's own client.

    Returns the archive's path, verified against the pinned SHA-256. A failed download (no
    network, no pip/npm, an index without the package) is one :class:`ILTError` line that says
    what to fetch and how.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if source.kind == "npm" and shutil.which("npm") is None:
        # Python-only machines: the same pinned tarball from the npm registry itself, hash-checked below.
        archive = _download_url(name, source, source.npm_tarball_url, dest_dir / source.filename, progress)
        verify_source(name, source, archive)
        say(progress, f"fetched {archive.name} ({archive.stat().st_size / 1e6:.1f} MB), SHA-256 verified")
        return archive
    if source.kind != "npm":
        (dest_dir / PIN_FILE).write_text(source.pin_line + "\n", encoding="utf-8")
    command = source.fetch_command(dest_dir)
    say(progress, f"fetching {source.requirement} ({source.kind}) from {source.registry}: {shlex.join(command)}")
    try:
        result = _run(command, cwd=dest_dir)
    except OSError as exc:  # e.g. npm not installed
        raise _fetch_failed(name, source, f"cannot run {command[0]!r} ({exc.strerror or exc})") from exc
    if result.returncode != 0:
        said = [line.strip() for line in (result.stderr or result.stdout or "").splitlines() if line.strip()]
        if any("DO NOT MATCH THE HASHES" in line for line in said):
            got = [line.split()[-1] for line in said if line.startswith("Got")]
            raise ILTError(
                f"pip download of {source.requirement} ({source.filename}): SHA-256 is "
                f"{got[-1] if got else 'different'}, expected {source.sha256}; the download is corrupted or "
                f"not the pinned release (a proxy or mirror serving other bytes?)"
            )
        errors = [line for line in said if line.lower().startswith(("error", "npm err"))]
        why = (errors or said or [f"exit status {result.returncode}"])[-1]
        raise _fetch_failed(name, source, f"`{command[0] if source.kind == 'npm' else 'pip download'}` said: {why}")
    archive = dest_dir / source.filename
    if not archive.is_file():
        got = ", ".join(sorted(p.name for p in dest_dir.iterdir() if p.name != PIN_FILE)) or "nothing"
        raise _fetch_failed(name, source, f"expected the file {source.filename}, the client wrote {got}")
    verify_source(name, source, archive)
    say(progress, f"fetched {archive.name} ({archive.stat().st_size / 1e6:.1f} MB), SHA-256 verified")
    return archive


def verify_source(name: str, source: Source, archive: Path) -> None:
    """Raise :class:`ILTError` unless ``archive`` has the SHA-256 ``source`` pins (for data recipe ``name``)."""
    archive = Path(archive)
    if not archive.is_file():
        raise ILTError(f"archive {archive} for data recipe {name!r} does not exist; expected {source.filename}")
    observed = sha256_file(archive)
    if observed != source.sha256:
        raise ILTError(
            f"{archive}: SHA-256 is {observed}, expected {source.sha256} for {source.requirement} "
            f"({source.filename}); the file is corrupted or not the pinned release: delete it and fetch "
            f"it again ({source.manual_hint()})"
        )


__all__ = ["NPM_REGISTRY", "PIN_FILE", "Source", "fetch_source", "say", "verify_source"]
