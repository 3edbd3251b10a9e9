"""Messages for bad command lines and config files (split out of :mod:`kbench.config`):
a jsonargparse error becomes one line naming the key, its allowed values and, for an
unknown key, the closest valid one. Keras-free, like the config.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import fields

from jsonargparse import ArgumentError

#: Keys whose type is a union of other types than ``X | None``: what to say they accept.
UNION_WANTS = {"trainer.profile": "true, false or trace"}


def explain(message: str, sections: dict) -> str:
    """Add the valid keys (and the closest match) to an unknown-key error message
    (``sections``: ``{section name: config dataclass}``)."""
    keys = {f"{sec}.{f.name}" for sec, cls in sections.items() for f in fields(cls)}
    grouped = [f"{g}.{o}" for g, o in re.findall(r"Group '(\w+)' does not accept option '(\w+)'", message)]
    for bad in grouped + re.findall(r"--?([\w.]+)", message):
        if bad in keys or bad in ("config", "print_config", "help", "resume"):
            continue
        sec = bad.split(".")[0]
        valid = sorted(k for k in keys if k.startswith(sec + ".")) if sec in sections else sorted(sections)
        close = difflib.get_close_matches(bad, keys | set(valid), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        return f"{message}\nunknown key {bad!r}.{hint} Valid keys: {', '.join(valid)}"
    return message


def error_message(error: ArgumentError, sections: dict) -> str:
    """One message for a jsonargparse error: unknown keys get the valid keys (:func:`explain`),
    ``typing.Literal[...]`` reads ``one of [...]`` and a ``recipe.phases`` of the wrong shape
    gets an example (``sections``: ``{section name: config dataclass}``)."""
    msg = str(error).strip()
    if msg.startswith('Parser key "recipe.phases"'):
        given = re.search(r"Given value: (.*)", msg)
        return ("recipe.phases must be a list of phases such as [{name: head, epochs: 3, learning_rate: 1e-3, "
                f"train: none}}] (or null for the recipe.name preset); got {given.group(1) if given else 'another type'}")
    union = re.match(r'Parser key "([\w.]+)":\s+Does not validate against any of the Union subtypes', msg)
    if union:  # an Optional[...] key: the first subtype's complaint and the value, on one line
        first = re.search(r"Errors:\s+- (.*?)(?:\. Got value: .*)?\n", msg)
        given = re.search(r"Given value: (.*)", msg)
        if union.group(1) in UNION_WANTS:
            return (f"{union.group(1)}: expected {UNION_WANTS[union.group(1)]}, got "
                    f"{given.group(1) if given else 'another type'}")
        want = first.group(1) if first else "another type"
        out = (f"{union.group(1)}: {want[0].lower() + want[1:]} or null, got "
               f"{given.group(1) if given else 'another type'}")
        out = re.sub(r"a typing\.Literal\[(.*?)\]", r"one of [\1]", out)
        return out.replace("a <class 'float'>", "a number").replace("a <class 'int'>", "an integer")
    return re.sub(r"a typing\.Literal\[(.*?)\]", r"one of [\1]", explain(msg, sections))


__all__ = ["UNION_WANTS", "error_message", "explain"]
