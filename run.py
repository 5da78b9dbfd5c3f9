"""The command line: python run.py COMMAND [--flags] (python run.py COMMAND --help for each one's flags)."""
import importlib
import os
import sys

COMMANDS = {
    # name: (module, config class, description)
    "chat": ("recipe.chat", "ChatConfig", "talk with a model (R1 system prompt): a conversation, or one question given as an argument"),
    "grpo": ("grpo.train", "GRPOConfig", "train with GRPO (group relative policy optimization) on rewards"),
    "sft": ("sft.train", "SFTConfig", "supervised fine-tuning on conversations, packed (R1 cold start / stage 2)"),
    "distill": ("distill.train", "DistillConfig", "distil a teacher's token distributions into a smaller student"),
    "sample": ("recipe.sample", "SampleConfig", "sample and score completions; --keep best: rejection sampling"),
    "pipeline": ("recipe.pipeline", "PipelineConfig", "the R1 recipe end to end: every stage, then report.md"),
    "eval": ("recipe.evaluate", "EvalConfig", "score models on a held-out split: accuracy, format, pass@k"),
}


def usage() -> str:
    lines = ["usage: python run.py COMMAND [--flags]   (python run.py COMMAND --help lists its flags)",
             "", "commands:"]
    lines += [f"  {name:<10} {description}" for name, (_, _, description) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.getcwd() not in sys.path:  # your own modules (--reward-funcs mymod:fn) from the current folder, as
        sys.path.insert(1, os.getcwd())  # `python -m` allows; after the project, so they never shadow it
    from common.config import ConfigError, parse_config
    from tasks.loaders import DataError

    module_name, config_name, description = COMMANDS[name]
    module = importlib.import_module(module_name)
    try:
        config = parse_config(getattr(module, config_name), rest, prog=f"run.py {name}",
                              description=description)
        module.main(config)
    except (ConfigError, DataError, FileNotFoundError, FileExistsError) as e:
        print(f"error: run.py {name}: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a run that stopped itself (non-finite losses, a failed stage): say why
        if os.environ.get("R1_DEBUG"):
            raise
        print(f"error: run.py {name}: {e} (R1_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nrun.py {name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
