"""Settings on the command line, in both forms every script accepts: `key=value` and `--key value`.

The options are made from the schema (config.py), so a setting has one name: `--learning_rate 1e-4`,
`--learning-rate 1e-4` and `learning_rate=1e-4` are the same. Values are read as YAML (`1e-4`, `true`,
`[1, 2]`, `null`); a list setting also takes several words (`--eval_splits train test`). Every value goes
through config.check_value; a key given twice, an unknown key (with the nearest name) and an empty value
are errors before anything runs.
"""
from __future__ import annotations

import argparse

from premem_kit.core import config
from premem_kit.core.config import ConfigError

# evaluate.py's flags before settings had one name (and grid files' evaluate_args): each is now its key
RENAMED_EVAL_FLAGS = {
    "--samples": "eval_samples", "--temperature": "eval_temperature", "--top-p": "eval_top_p",
    "--max-new-tokens": "eval_max_new_tokens", "--batch-size": "eval_batch_size",
    "--ppl-batch-size": "eval_ppl_batch_size", "--train-examples": "eval_train_examples",
    "--test-examples": "eval_test_examples", "--splits": "eval_splits", "--variants": "eval_variants",
    "--seed": "eval_seed", "--base": "eval_base_model", "--no-base": "eval_base_model",
}


class _Once(argparse.Action):
    """Stores the raw value; the same setting given twice (say as --num_epochs and --num_train_epochs) is an
    error, not last-wins."""

    def __call__(self, parser, namespace, values, option_string=None):
        if hasattr(namespace, self.dest):
            parser.error(f"{option_string}: '{self.dest}' is given twice; keep one")
        setattr(namespace, self.dest, values)


def option_strings(name: str) -> list[str]:
    """--name, --name-with-dashes, and the same for the key's TrainingArguments aliases."""
    names = [name] + [a for a, k in config.ALIASES.items() if k == name]
    return list(dict.fromkeys(s for n in names for s in (f"--{n}", f"--{n.replace('_', '-')}")))


def add_setting_options(parser: argparse.ArgumentParser, names, title: str = "settings (config keys)") -> None:
    """One option per setting in `names`, raw text kept for check_value (nothing set unless given)."""
    group = parser.add_argument_group(title, "each also as key=value; python train.py --help-config lists "
                                             "every key with its default")
    for name in names:
        f = config.FIELDS[name]
        kinds, _ = config.allowed_types(name)
        kw = {"nargs": "+"} if kinds == (list,) else {"nargs": "?", "const": "true"} if kinds == (bool,) else {}
        group.add_argument(*option_strings(name), dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                           action=_Once, help=f.metadata["help"], **kw)


def collect(ns: argparse.Namespace, key_values, names) -> dict:
    """{key: value} from the parsed options and the key=value words; a key given twice is an error."""
    out, seen = {}, {}
    given = [(n, getattr(ns, n), f"--{n}") for n in names if hasattr(ns, n)]
    for w in key_values:
        if "=" not in w:
            raise ConfigError(f"command line: '{w}' is not of the form key=value")
        given.append((*(x.strip() for x in w.split("=", 1)), w))
    for key, raw, shown in given:
        name = config.canonical(key, f"command line '{shown}'")
        if name not in names:
            raise ConfigError(f"command line '{shown}': '{name}' is not a setting this command takes")
        if name in seen:
            raise ConfigError(f"command line: '{name}' is given twice ({seen[name]} and {shown}); keep one")
        seen[name] = shown
        out[name] = config.check_value(name, config.read_value(raw), f"command line '{shown}'")
    return out


def parse(parser: argparse.ArgumentParser, argv, names, not_here: str = "") -> tuple[argparse.Namespace, list]:
    """parse_known_intermixed_args, then a clear error for each word left over: a renamed evaluate.py
    flag, a setting this command does not take (`not_here` says why), or the nearest option name."""
    ns, extra = parser.parse_known_intermixed_args(argv)
    for word in extra:
        flag = word.split("=", 1)[0]
        if not flag.startswith("--"):
            parser.error(f"unrecognized argument {word!r}")
        if flag in RENAMED_EVAL_FLAGS and RENAMED_EVAL_FLAGS[flag] in names:
            parser.error(f"{flag} is now --{RENAMED_EVAL_FLAGS[flag]} (the config key's name)")
        key = config.ALIASES.get(flag[2:].replace("-", "_"), flag[2:].replace("-", "_"))
        if key in config.FIELDS:
            parser.error(f"{flag}: '{key}' is not a setting of this command{not_here}")
        parser.error(f"unrecognized option {flag}{config.suggest(key, names)}")
    return ns, extra


def cell_keys_for(flags: list[str]) -> dict:
    """An old grid file's evaluate_args as the keys to set instead ({key: value}), for the error message."""
    out, key = {}, None
    for w in map(str, flags):
        if w.startswith("--"):
            key = RENAMED_EVAL_FLAGS.get(w, w[2:].replace("-", "_"))
            out[key] = "true" if w == "--base" else "false" if w == "--no-base" else None
        elif key is not None:
            out[key] = w if out[key] is None else f"{out[key]} {w}"
    return out
