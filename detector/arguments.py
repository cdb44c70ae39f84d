"""How the command line reads its arguments: `key=value` overrides anywhere, options in any order.

argparse alone refuses a positional that comes after the options in some orders (`eval CONFIG
--weights W key=value`), and an option with an optional value (`--resume [CHECKPOINT]`)
swallows the override that follows it. So the tokens of a command are sorted before argparse
sees them: a `key=value` that is not an option's value is an override, wherever it stands; the
other tokens go to argparse, positionals first, each option with its own values. A subcommand
takes overrides by declaring them with `add_overrides`; nothing else is needed.
"""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence

# A dotted key, then "=": `train.epochs=3`, `model.rpn.nms_thresh=0.6`.
OVERRIDE = re.compile(r"[A-Za-z_][\w.\-]*=")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with usage errors on one line (exit 2), as the package's own errors."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """Let `parser`'s command take `key=value` overrides, before or after any option."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=help)


def is_override(token: str) -> bool:
    """`key=value` with a dotted key; an existing file (say `a=b.jpg`) is a path, not an override."""
    return OVERRIDE.match(token) is not None and not os.path.exists(token)  # False, not OSError, for a name too long


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`parser.parse_args(argv)` where `parser` has subcommands; a subcommand declared with
    `add_overrides` gets its overrides from anywhere among its tokens, in the order typed."""
    argv = list(argv)
    command_at = next((i for i, token in enumerate(argv) if not token.startswith("-")), None)
    command = _subcommand(parser, argv[command_at]) if command_at is not None else None
    if command is None:
        return parser.parse_args(argv)  # argparse says what is wrong, or shows the help
    takes_overrides = any(action.dest == "overrides" for action in command._actions)
    if takes_overrides:
        positionals, options, overrides = sort_tokens(command, argv[command_at + 1:])
        argv = argv[:command_at + 1] + positionals + options
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named by the command, not by `detector`
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not takes_overrides:
        return args
    if args.overrides:  # positionals beyond the command's own: neither theirs nor an override
        command.error(f"unexpected argument {args.overrides[0]!r}: neither an option, "
                      f"its value, nor a key=value override")
    args.overrides = overrides
    return args


def sort_tokens(command: argparse.ArgumentParser, tokens: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(positionals, options with their values, overrides) of a subcommand's tokens."""
    positionals, options, overrides = [], [], []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":  # everything after it is positional
            positionals += tokens[index:]
            break
        if token.startswith("-") and token != "-":
            name, inline, _ = token.partition("=")
            action = _option(command, name)
            options.append(token)
            if action is not None and not inline:  # an unknown option is left for argparse to name
                taken = _values_taken(action, tokens[index:])
                options += tokens[index:index + taken]
                index += taken
        elif is_override(token):
            overrides.append(token)
        else:
            positionals.append(token)
    return positionals, options, overrides


def _values_taken(action: argparse.Action, following: Sequence[str]) -> int:
    """How many of the `following` tokens are the values of option `action`. An optional value
    (`nargs="?"`, `"*"`) is never an option or an override, and passes the action's own
    `accepts_value(token)` when it has one (`--resume` takes a checkpoint, not a config)."""
    nargs = action.nargs
    if nargs is None:
        return min(1, len(following))
    if isinstance(nargs, int):
        return min(nargs, len(following))
    if nargs not in ("?", "*", "+"):  # argparse.SUPPRESS and the like: no value
        return 0
    accepts = getattr(action, "accepts_value", None)
    count = 0
    for token in following:
        if token.startswith("-") or is_override(token) or (accepts is not None and not accepts(token)):
            break
        count += 1
        if nargs == "?":
            break
    return count


def _option(command: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    """The action of option `name`, or of the one option it abbreviates (as argparse allows)."""
    actions = command._option_string_actions
    if name in actions:
        return actions[name]
    matches = {actions[option] for option in actions if name.startswith("--") and option.startswith(name)}
    return matches.pop() if len(matches) == 1 else None


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(name)
    return None
