"""A separate virtual environment with TRL, for the side-by-side benchmarks only (the project never
imports TRL). Created on first use in .venv-trl (gitignored), with the same torch and transformers
as requirements.txt, so both sides run the same kernels."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-trl"
TRL_VERSION = "1.16.0"


def pinned(package: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == package:
            return line.strip()
    raise KeyError(f"{package} is not pinned in requirements.txt")


def trl_python() -> str:
    """Path of the TRL venv's python, creating the venv (a minute or two) if it is missing; $TRL_PYTHON
    names a python that already has TRL (a machine with no package index)."""
    if os.environ.get("TRL_PYTHON"):
        return os.environ["TRL_PYTHON"]
    python = VENV / "bin" / "python"
    marker = VENV / f".trl-{TRL_VERSION}"
    if not marker.exists():
        print(f"creating {VENV} with trl=={TRL_VERSION} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + [pinned("torch")], check=True)   # the CPU build: must come first
        subprocess.run(pip + [f"trl=={TRL_VERSION}", pinned("transformers"), "datasets", "accelerate"], check=True)
        marker.touch()
    return str(python)


def run_child(script: str, *args: str) -> str:
    """Run bench/<script> in the TRL venv; return its stdout (its stderr passes through)."""
    out = subprocess.run([trl_python(), str(ROOT / "bench" / script), *args], check=True, stdout=subprocess.PIPE,
                         text=True)
    return out.stdout
