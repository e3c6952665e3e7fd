"""Make the benchmark's own virtual environment, bench/.work/venv.

The servers under test run from the project's .venv exactly as deployed. The harness needs more
(numpy for SSIM, pyinstrument for profiles); installing those into .venv would change what the
server imports (sqlite-utils imports numpy when it can, about 11 MB more RSS per worker), so they
live in a separate venv that sees .venv's packages through a .pth file.

    .venv/bin/python -m bench.env     # prints the harness's python
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench" / ".work" / "venv"


def bench_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(project["project"]["optional-dependencies"]["bench"])


def main() -> int:
    python = VENV / "bin" / "python"
    reqs = bench_requirements()
    marker = VENV / (
        ".installed-" + "-".join(sorted(r.replace(">", "").replace("=", "") for r in reqs))
    )
    if not marker.exists():
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *reqs], check=True)
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # .venv's packages after the bench venv's own: Pillow, Flask, ... exactly as served.
        Path(purelib, "image_origin_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        for old in VENV.glob(".installed-*"):
            old.unlink()
        marker.touch()
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
