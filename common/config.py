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


# What a resumed run may change: how long it runs, how it saves, logs and is evaluated, where it runs,
# and how a step is computed without changing what it computes (sharding, activation checkpointing and
# offloading, GRPO's micro-batches and log-prob chunks: the same update to float rounding). Anything else
# (model, data, group size, loss, rewards, dtype, optimizer...) would make it another run.
RESUME_MAY_CHANGE = {"max_steps", "max_minutes", "save_every", "keep_checkpoints", "log_samples", "report_to",
                     "eval_every", "eval_problems", "eval_dataset", "device", "resume", "overwrite",
                     "fsdp", "gradient_checkpointing", "activation_offload", "micro_batch_size", "logprob_chunk_size",
                     "plan"}


def parse_config(config_type, argv: list[str], prog: str, description: str = ""):
    """An instance of `config_type` from `argv` (and an optional `--config FILE`). Flags are never
    abbreviated (`--max-comp 16` is an error, not --max-completion-length).

    `--resume RUN` (commands whose `resume` names a run or checkpoint folder) continues that run with
    the settings in its config.json: a file and flags given now override them only in
    RESUME_MAY_CHANGE; a different value for anything else is an error naming it."""
    parser = _Parser(config_type, prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", default=None, help="YAML or JSON file of field values; flags override it")
    fields = {f.name for f in dataclasses.fields(config_type)}
    known = {name: name for name in fields}
    for f in dataclasses.fields(config_type):  # a file accepts the flags' aliases too (num_generations)
        known.update({alias.lstrip("-").replace("-", "_"): f.name for alias in f.metadata.get("aliases", [])})
    from_file = {}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a file")
        from_file = read_config_file(argv[i + 1], known)
    positional = getattr(config_type, "positional", None)
    if positional and argv and not argv[0].startswith("-"):
        argv = [f"--{positional}", argv[0], *argv[1:]]
    values = _parse(parser, argv, from_file, fields)
    if isinstance(values.get("resume"), str) and values["resume"]:
        given = {**from_file, **_parse(parser, argv, dict.fromkeys(fields, _NOT_GIVEN), fields)}
        given = {k: v for k, v in given.items() if v is not _NOT_GIVEN}
        saved = saved_settings(values["resume"], given)
        values = _parse(parser, argv, {**{k: v for k, v in saved.items() if k in fields}, **from_file}, fields)
    try:
        return config_type(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


_NOT_GIVEN = object()  # a default that tells the flags given on the command line from the others


def _parse(parser, argv: list[str], defaults: dict, fields: set[str]) -> dict:
    """{field: value} from argv over `defaults` (the dataclass's own where these name none)."""
    saved = {k: parser.get_default(k) for k in defaults}
    parser.set_defaults(**defaults)
    try:
        return {k: v for k, v in vars(parser.parse_args(argv)).items() if k in fields}
    finally:
        parser.set_defaults(**saved)


def saved_settings(resume: str, given: dict) -> dict:
    """The settings in the config.json of the run `resume` names, after checking that `given` (the
    command line's and the --config file's values) changes only what a resumed run may change."""
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such folder")
    homes = (path, path.parent) if path.name.startswith("checkpoint-") else (path,)  # a run's checkpoint: its run
    saved_file = next((p / "config.json" for p in homes if (p / "config.json").exists()), None)
    if saved_file is None:
        raise ConfigError(f"--resume {resume}: no config.json there (not a run folder or one of its checkpoints)")
    saved = json.loads(saved_file.read_text())
    changed = sorted(k for k, v in given.items()
                     if k in saved and k not in RESUME_MAY_CHANGE | {"output_dir"} and v != saved[k])
    if changed:
        k = changed[0]
        may = ", ".join(f"--{m.replace('_', '-')}" for m in sorted(RESUME_MAY_CHANGE - {"resume", "overwrite"}))
        raise ConfigError(f"--resume {resume}: --{k.replace('_', '-')} {given[k]!r} differs from the run's "
                          f"{saved[k]!r}; a resumed run keeps its settings (it may change {may}): start a new "
                          f"run to change it")
    if "output_dir" in given and Path(given["output_dir"]).resolve() != saved_file.parent.resolve():
        raise ConfigError(f"--resume {resume}: --output-dir {given['output_dir']} is another folder; a resumed "
                          f"run continues in its own ({saved_file.parent})")
    return saved


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
