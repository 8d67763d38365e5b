"""A training configuration (a dataclass) as command-line flags, both ways: what a page shows as the command for
its run, and what the script parses back. One flag per field, named as the field with dashes (--max-seconds);
booleans as --flag / --no-flag.

    command_line(config, "spaces.retrieval.train")                  # python -m spaces.retrieval.train --max-steps 50
    parse_config(TrainConfig, FLAG_HELP, "Train a small CLIP", argv)  # -> a checked TrainConfig
"""

from __future__ import annotations

import argparse
from dataclasses import asdict


def flag_words(name: str, value) -> list[str]:
    """How one field's value reads on the command line: ["--max-steps", "50"], ["--no-soft-targets"], ..."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return [f"--{flag}" if value else f"--no-{flag}"]
    return [f"--{flag}", str(value)]


def command_line(config, module: str, processes: int = 1) -> str:
    """The shell command that runs `config` as `python -m module` (or `accelerate launch` over `processes`),
    naming only the fields that differ from the defaults."""
    defaults = asdict(type(config)())
    launcher = (f"accelerate launch --multi_gpu --num_processes {processes} -m" if processes > 1 else "python -m")
    changed = [word for name, value in asdict(config).items() if value != defaults[name]
               for word in flag_words(name, value)]
    return " ".join([launcher, module, *changed])


def parse_config(config_class, flag_help: dict[str, str], description: str, argv: list[str] | None = None):
    """A checked `config_class` from the command line (`config.check()` raises ValueError on a bad value)."""
    parser = argparse.ArgumentParser(description=description)
    for name, default in asdict(config_class()).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=flag_help[name])
        else:
            parser.add_argument(flag, type=type(default), default=default, help=flag_help[name])
    config = config_class(**vars(parser.parse_args(argv)))
    config.check()
    return config
