"""restic, the baseline the end-to-end benches compare Amber against.

Finds ``restic`` on PATH (Debian's package; installed with ``apt-get install -y restic``
when missing and the bench runs as root), and wraps the few commands the benches need,
on a local repository or on S3 (``s3:http://127.0.0.1:PORT/bucket``):

    r = Restic(repo, work_dir)         # password and cache dir set for every call
    r.init()
    summary = r.backup([paths...])     # restic's --json summary (data_added, ...)
    r.restore("latest", target)
    r.repo_size()                      # bytes on disk (local) or stored (S3)

Every command runs with ``RESTIC_PASSWORD`` set (a fixed bench password: nothing here is
secret), its own cache directory under the work dir (so a bench never reads a cache from
a previous run) and, for S3, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``. Timing is
the caller's business: :meth:`Restic.argv` and :meth:`Restic.env` give what to run.

    .venv/bin/python bench/restic.py        # find or install restic; print its version
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PASSWORD = "amber-bench-not-a-secret"


class ResticError(RuntimeError):
    pass


def _apt_install() -> None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ResticError(
            "restic is not installed and this bench cannot install it "
            "(needs root and apt-get): run 'apt-get install -y restic'"
        )
    print("restic: not found, installing Debian's package ...", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", "restic"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise ResticError(f"apt-get install restic failed:\n{res.stderr[-2000:]}")


def find_restic(install: bool = True) -> str:
    """Path of the restic binary, installing Debian's package if missing."""
    path = shutil.which("restic")
    if path is None and install:
        _apt_install()
        path = shutil.which("restic")
    if path is None:
        raise ResticError("restic is not on PATH")
    return path


def restic_version(binary: str | None = None) -> str:
    """e.g. ``restic 0.14.0 compiled with go1.19.8 on linux/amd64``."""
    out = subprocess.run(
        [binary or find_restic(), "version"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def dir_size(path: Path) -> int:
    """Sum of the apparent sizes of the regular files under ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


class Restic:
    """One restic repository: a local directory, or ``s3:http://host:port/bucket[/prefix]``."""

    def __init__(
        self,
        repo: str | Path,
        work_dir: Path,
        *,
        s3_keys: tuple[str, str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.repo = str(repo)
        self.local = not self.repo.startswith(("s3:", "sftp:", "rest:"))
        self.binary = binary or find_restic()
        self.cache = Path(work_dir) / "restic-cache"
        self.s3_keys = s3_keys

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RESTIC_", "AWS_"))}
        env.update(
            RESTIC_REPOSITORY=self.repo,
            RESTIC_PASSWORD=PASSWORD,
            RESTIC_CACHE_DIR=str(self.cache),
            RESTIC_PROGRESS_FPS="0.2",
        )
        if self.s3_keys is not None:
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = self.s3_keys
        return env

    def argv(self, *args: str) -> list[str]:
        return [self.binary, *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(self.argv(*args), env=self.env(), capture_output=True, text=True)
        if check and res.returncode != 0:
            raise ResticError(f"restic {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
        return res

    # -- commands
    def init(self) -> None:
        if self.local:
            Path(self.repo).parent.mkdir(parents=True, exist_ok=True)
        self.run("init")

    def backup_argv(self, paths: list[Path], *extra: str) -> list[str]:
        return self.argv("backup", "--json", *extra, *map(str, paths))

    def restore_argv(self, snapshot: str, target: Path) -> list[str]:
        return self.argv("restore", snapshot, "--target", str(target))

    def backup(self, paths: list[Path], *extra: str) -> dict[str, Any]:
        res = self.run(*self.backup_argv(paths, *extra)[1:])
        return parse_backup_summary(res.stdout)

    def restore(self, snapshot: str, target: Path) -> None:
        self.run(*self.restore_argv(snapshot, target)[1:])

    def stats_raw(self) -> dict[str, Any]:
        """``restic stats --mode raw-data --json``: stored blob sizes (compressed)."""
        return json.loads(self.run("stats", "--mode", "raw-data", "--json").stdout)

    def repo_size(self) -> int:
        """Bytes the repository takes: files on disk for a local repository (packs,
        index, snapshots, keys), else the stored size of its blobs."""
        if self.local:
            return dir_size(Path(self.repo))
        return int(self.stats_raw()["total_size"])


def parse_backup_summary(stdout: str) -> dict[str, Any]:
    """The ``summary`` message of ``restic backup --json`` output."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if obj.get("message_type") == "summary":
            return obj
    raise ResticError(f"no summary in restic backup output:\n{stdout[-2000:]}")


if __name__ == "__main__":
    print(restic_version(find_restic()))
