"""Options as data: each method declares its options once (an `Options` table of `Option`s, in its module), and
from that one table come the API's validation (`Options.resolve`), the command line's arguments
(`add_arguments`), the part of a cached G's key that options make (`Options.key`) and the options reference of the
docs (`markdown`, written to docs/options.md by `simattr options`).

An option that may differ between the two texts (`per_side`) takes `PerSide(a, b)`; any other value applies to
both. Captum's names are accepted where they mean the same thing (`Option.aliases`: n_steps, baselines, ...).
Every mistake is a `SimattrError` that names the option and the method.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .errors import SimattrError

#: accepted and ignored (what it asks for is always there): Captum's return_convergence_delta (IJ's `error`)
IGNORED = {"return_convergence_delta": "the completeness error is always returned (Explanation.error)"}


class PerSide:
    """A value for each text of a pair: PerSide(a, b) (e.g. reference=PerSide("zero", "pad"))."""

    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __iter__(self):
        return iter((self.a, self.b))

    def __getitem__(self, tower: int):
        return (self.a, self.b)[tower]

    def __eq__(self, other):
        return isinstance(other, PerSide) and _same(self.a, other.a) and _same(self.b, other.b)

    def __hash__(self):
        return hash((type(self), id(self.a), id(self.b)))

    def __repr__(self):
        return f"PerSide({self.a!r}, {self.b!r})"


def _same(x, y) -> bool:
    if x is y:
        return True
    try:
        return bool(x == y)
    except Exception:  # noqa: BLE001  (tensors compare elementwise)
        return False


def side(value, tower: int):
    """The value of an option for tower 0 (text a) or 1 (text b)."""
    return value[tower] if isinstance(value, PerSide) else value


# ------------------------------------------------------------------------------------------------- checks
# A check takes the user's value and returns the value to use, or raises ValueError with what is wrong (the table
# turns it into a SimattrError naming the option and the method).
def one_of(*choices, aliases: Optional[dict] = None) -> Callable:
    def check(v):
        v = (aliases or {}).get(v, v) if isinstance(v, str) else v
        if not isinstance(v, str) or v not in choices:
            raise ValueError(f"choose one of {', '.join(map(repr, choices))}")
        return v
    check.choices = choices
    return check


def boolean(v):
    if not isinstance(v, bool) and type(v).__name__ != "bool_":
        raise ValueError("must be True or False")
    return bool(v)


def integer(minimum: int = None, optional: bool = False, maximum: int = None):
    def check(v):
        if optional and v is None:
            return None
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise ValueError("must be an integer" + (" or None" if optional else ""))
        try:
            v = int(v.__index__())
        except (TypeError, ValueError):  # e.g. a numpy array of one element
            raise ValueError("must be an integer" + (" or None" if optional else "")) from None
        if maximum is not None and v > maximum:
            raise ValueError(f"must be at most {maximum}")
        if minimum is not None and v < minimum:
            raise ValueError(f"must be at least {minimum}")
        return v
    return check


def positive_number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        raise ValueError("must be a positive number")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError("must be a positive number") from None
    if not (0 < f < math.inf):
        raise ValueError("must be a positive number")
    return f


def fraction(v):
    try:
        f = positive_number(v) if v != 0 else 0.0
    except ValueError:
        raise ValueError("must be a number between 0 and 1") from None
    if not 0 <= f <= 1:
        raise ValueError("must be a number between 0 and 1")
    return f


#: the most fixed path nodes per text (`steps=N`): more is beyond any rule's need and runs for hours
MAX_FIXED_STEPS = 100_000


def steps(v):
    if isinstance(v, str) and v == "auto":
        return v
    return integer(1, maximum=MAX_FIXED_STEPS)(v)


def anything(v):
    return v


# ------------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Cli:
    """How an option appears on the command line (None fields: derived from the option)."""

    flag: Optional[str] = None  # default: --name-with-dashes
    type: Optional[Callable] = None  # argparse type (default: that of the option's default)
    action: Optional[str] = None  # "store_true", "store_false", "boolean" (--x / --no-x)
    choices: Optional[tuple] = None  # default: the check's choices
    help: Optional[str] = None  # default: the option's help
    dest: Optional[str] = None  # argparse dest when the flag's name is not the option's


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    check: Callable = anything
    per_side: bool = False  # takes PerSide(a, b)
    in_key: bool = False  # changes a text's G: part of its cache key
    aliases: tuple = ()  # other names accepted for it (Captum's)
    cli: Optional[Cli] = Cli()  # None: not on the command line
    doc_default: Optional[str] = None  # how the docs write the default, when repr() does not say it

    def validate(self, value, method: str):
        if isinstance(value, PerSide):
            if not self.per_side:
                raise SimattrError(f"option {self.name!r} of method {method!r} is shared by both texts: give one "
                                   f"value, not PerSide")
            return PerSide(self._one(value.a, method), self._one(value.b, method))
        return self._one(value, method)

    def _one(self, value, method):
        try:
            return self.check(value)
        except ValueError as exc:
            raise SimattrError(f"option {self.name}={_show(value)} of method {method!r}: {exc}") from None
        except (TypeError, OverflowError, ArithmeticError):
            raise SimattrError(f"option {self.name}={_show(value)} of method {method!r}: not a value it takes "
                               f"({self.help})") from None


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Settings(dict):
    """A method's resolved options (every option, defaults filled in); also readable as attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Options:
    """One method's options."""

    method: str
    options: list = field(default_factory=list)

    def __post_init__(self):
        self.by_name = {o.name: o for o in self.options}
        self.alias = {a: o.name for o in self.options for a in o.aliases}
        if len(self.by_name) != len(self.options):
            raise ValueError(f"{self.method}: an option is declared twice")

    def __iter__(self):
        return iter(self.options)

    def __contains__(self, name):
        return name in self.by_name or name in self.alias

    @property
    def names(self) -> list:
        return [o.name for o in self.options]

    def canonical(self, name: str) -> str:
        return self.alias.get(name, name)

    def resolve(self, given: Optional[dict] = None, soft: Optional[dict] = None) -> Settings:
        """Every option of the method, validated: `given` (each must be an option of this method, or an alias) over
        `soft` (defaults from a front end or an Explainer, used where this method has the option) over the
        declared defaults."""
        values = {}
        for source, strict in ((soft or {}, False), (given or {}, True)):
            seen = {}
            for name, value in source.items():
                if name in IGNORED:
                    continue
                canon = self.canonical(name)
                if canon not in self.by_name:
                    if strict:
                        self._unknown(name)
                    continue
                if canon in seen and seen[canon] != name:
                    raise SimattrError(f"give either {seen[canon]!r} or {name!r} (the same option of method "
                                       f"{self.method!r}), not both")
                seen[canon] = name
                values[canon] = value
        return Settings((o.name, o.validate(values[o.name], self.method) if o.name in values else o.default)
                        for o in self.options)

    def _unknown(self, name):
        import difflib
        close = difflib.get_close_matches(name, self.names + list(self.alias), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SimattrError(f"method {self.method!r} does not take option {name!r}{hint}; it takes "
                           f"{', '.join(self.names) or 'none'}")

    def key(self, settings: dict, tower: int, option_key: Callable) -> tuple:
        """The options that change a text's G, for tower 0 or 1, as `option_key` makes values hashable."""
        return tuple((o.name, option_key(side(settings[o.name], tower))) for o in self.options if o.in_key)


# ------------------------------------------------------------------------------------------------- front ends
def _flag(o: Option) -> str:
    return (o.cli.flag if o.cli and o.cli.flag else "--" + o.name.replace("_", "-"))


def add_arguments(parser: argparse.ArgumentParser, tables: dict) -> dict:
    """One command-line argument per option name over all methods' tables (its help says which methods take it
    and their defaults); every default is None (= not given: the method's own default applies). Returns
    {argparse dest: option name}."""
    merged = {}
    for method, table in tables.items():
        for o in table:
            if o.cli is not None:
                merged.setdefault(_flag(o), []).append((method, o))
    dests = {}
    for flag, entries in merged.items():
        o = entries[0][1]
        cli = o.cli
        dest = cli.dest or flag[2:].replace("-", "_")
        dests[dest] = o.name
        groups = {}  # (help, default) -> methods: methods that mean the same by it are named together
        for m, e in entries:
            groups.setdefault((e.cli.help or e.help, _doc_default(e)), []).append(m)
        help_text = "; ".join(f"{', '.join(ms)}: {h} (default {d})" for (h, d), ms in groups.items())
        help_text = help_text.replace("%", "%%")
        if cli.action in ("store_true", "store_false"):
            parser.add_argument(flag, dest=dest, action=cli.action, default=None, help=help_text)
        elif cli.action == "boolean":
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            choices = cli.choices
            if choices is None:
                found = [getattr(e.check, "choices", None) for _, e in entries]
                choices = tuple(dict.fromkeys(c for cs in found if cs for c in cs)) if all(found) else None
            kind = cli.type or (type(o.default) if isinstance(o.default, (int, float)) and
                                not isinstance(o.default, bool) else None)
            parser.add_argument(flag, dest=dest, default=None, choices=choices,
                                **({"type": kind} if kind else {}), help=help_text)
    return dests


def _doc_default(o: Option) -> str:
    if o.doc_default is not None:
        return o.doc_default
    return f"`{o.default!r}`".replace("`", "") if o.default is not None else "None"


def markdown(tables: dict) -> str:
    """The options reference (docs/options.md): one table per method."""
    lines = ["# Options", "",
             "Generated from the option tables in the code (`simattr options > docs/options.md`; a test "
             "checks this page is current). Every method's options are validated against its table: an unknown "
             "name, a wrong type or a value outside the choices is a `SimattrError` naming the option. *Per side*: "
             "the option takes `PerSide(a, b)` (a value for each text) or one value for both. *In key*: the option "
             "changes a text's G, so it is part of the key under which `Explainer(cache_size=N)` keeps it.",
             ""]
    for method, table in tables.items():
        lines += [f"## `method=\"{method}\"`", "", "| option | default | per side | in key | CLI | meaning |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for o in table:
            name = f"`{o.name}`" + (f" ({', '.join(f'`{a}`' for a in o.aliases)})" if o.aliases else "")
            cli = f"`{_flag(o)}`" if o.cli is not None else "—"
            lines.append(f"| {name} | `{_doc_default(o)}` | {'yes' if o.per_side else ''} | "
                         f"{'yes' if o.in_key else ''} | {cli} | {o.help.replace('|', '/')} |")
        lines.append("")
    if IGNORED:
        lines += ["Accepted and ignored: " + "; ".join(f"`{k}` ({v})" for k, v in IGNORED.items()) + ".", ""]
    return "\n".join(lines)
