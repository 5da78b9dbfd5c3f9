"""`pip install ARGS` done by uv (a fraction of pip's time), with the settings pip would have used here.

    python scripts/uv_install.py -r requirements.txt

pip reads this machine's settings (a folder of local wheels, extra indexes, constraints) from its config
files and PIP_* variables; uv reads none of them, so they are passed on as flags, and uv is told to
weigh every index as pip does (`unsafe-best-match`) and to write the .pyc files at install, as pip does.
Exits non-zero when uv is missing or fails; the Makefile then installs with pip.
"""
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

FLAGS = {"find-links": "--find-links", "extra-index-url": "--extra-index-url", "index-url": "--index-url",
         "constraint": "--constraint"}


def uv_flags(listed: str) -> list[str]:
    """pip's settings, as `pip config list` prints them (key='value', several values space-separated), as uv
    flags. A key set both in a file and in a PIP_* variable (':env:.key') takes the variable's value, as pip does."""
    values: dict[str, list[str]] = {}
    for line in sorted(listed.splitlines(), key=lambda line: line.startswith(":env:")):  # the environment last
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in FLAGS:
            values[name] = shlex.split(value.strip().strip("'\""))
    out = []
    for name, listed_values in values.items():
        for value in listed_values:
            if value.startswith("file://") and not Path(value[len("file://"):]).is_dir():
                continue  # pip skips a missing local index with a warning; uv would stop
            out += [FLAGS[name], value]
    return out


def main(args: list[str]) -> int:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        print("uv_install.py: no uv here", file=sys.stderr)
        return 1
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                            check=True).stdout
    command = [uv, "pip", "install", "--quiet", "--python", sys.executable, "--compile-bytecode",
               "--index-strategy", "unsafe-best-match", *uv_flags(listed), *args]
    return subprocess.run(command).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
