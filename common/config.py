"""Command-line flags from a dataclass config (transformers' HfArgumentParser does the parsing).

Each command has one dataclass; each field is declared with `arg(default, "one line of help")`.
`--config FILE.yaml|.json` sets any fields from a file; flags on the command line override it.
A wrong flag or value ends with one line on stderr (exit 2), never a traceback.
"""
import dataclasses
import json
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser


def arg(default, help: str, **metadata):
    """A config field with its help line; lists/dicts take a factory."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


class ConfigError(ValueError):
    """A bad flag or flag value; the message names it."""


class _Parser(HfArgumentParser):
    def error(self, message):  # argparse would print the whole usage block first
        raise ConfigError(message)


def parse_config(config_type, argv: list[str], prog: str, description: str = ""):
    """An instance of `config_type` from `argv` (and an optional `--config FILE`). Flags are never
    abbreviated (`--max-comp 16` is an error, not --max-completion-length)."""
    parser = _Parser(config_type, prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", default=None, help="YAML or JSON file of field values; flags override it")
    known = {f.name: f.name for f in dataclasses.fields(config_type)}
    for f in dataclasses.fields(config_type):  # a file accepts the flags' aliases too (num_generations)
        known.update({alias.lstrip("-").replace("-", "_"): f.name for alias in f.metadata.get("aliases", [])})
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file")
        parser.set_defaults(**read_config_file(argv[i + 1], known))
    positional = getattr(config_type, "positional", None)
    if positional and argv and not argv[0].startswith("-"):
        argv = [f"--{positional}", argv[0], *argv[1:]]
    namespace = parser.parse_args(argv)
    values = {k: v for k, v in vars(namespace).items() if k in known.values()}
    try:
        return config_type(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def read_config_file(path: str, known: dict[str, str]) -> dict:
    """{field: value} from a YAML or JSON file; `known` maps each accepted key (field names and their
    aliases) to its field."""
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"--config {path}: no such file")
    text = file.read_text()
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--config {path}: not valid JSON: line {e.lineno}: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML: {line}{getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of field names to values")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"--config {path}: unknown field(s) {', '.join(unknown)}")
    fields: dict = {}
    for key, value in data.items():
        if known[key] in fields:
            raise ConfigError(f"--config {path}: {key} sets {known[key]} a second time")
        fields[known[key]] = value
    return fields


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
