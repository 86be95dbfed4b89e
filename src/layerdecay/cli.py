"""The ``layerdecay`` command: ``explain`` a model's plan, list ``plugins``.

``layerdecay explain MODEL`` builds the model on the meta device (shapes only: a giant model takes seconds
and no memory), plans it through the public API and prints the plan: a table by layer, ``--params`` one row
per parameter, ``--json``, ``--plot FILE.png``, ``--compare RECIPE`` for two recipes side by side.

Exit codes: 0 ok; 1 the model could not be built or planned, or the plot not drawn (the reason goes to
stderr); 2 usage error (bad arguments or option values, unknown recipe).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from layerdecay.errors import ConfigError, LayerDecayError, LayerDecayWarning

__all__ = ["main"]

MODEL_HELP = ("timm:<name>, torchvision:<name>, transformers:<ConfigClass or ModelClass>, path/to/config.json "
              "(or its folder), or package.module:factory")


def _number(minimum: float, *, exclusive: bool = False, maximum: float | None = None) -> Callable[[str], float]:
    """An argparse ``type`` that rejects values out of range, so they are usage errors (exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        low_ok = value > minimum if exclusive else value >= minimum
        if not math.isfinite(value) or not low_ok or (maximum is not None and value > maximum):
            bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            if maximum is not None:
                bound += f" and <= {maximum:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    return parse


def _lr_mult_item(text: str) -> tuple[str, float]:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=MULT, e.g. head=10, got {text!r}")
    return pattern, _number(0.0, exclusive=True)(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerdecay", description="Layer-wise lr decay plans for any model.")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser(
        "explain", help="print the plan of a model (built on the meta device)",
        description="Print the plan of a model, built on the meta device (no weights, no memory).",
    )
    ex.add_argument("model", help=MODEL_HELP)
    ex.add_argument("--layer-decay", type=_number(0.0, exclusive=True), default=None,
                    help="per-layer lr factor (default 0.75; 1 disables it)")
    ex.add_argument("--weight-decay", type=_number(0.0), default=None, help="base weight decay (default 0.05)")
    ex.add_argument("--recipe", default=None, help="recipe of the owning plugin (default: the published one)")
    ex.add_argument("--min-scale", type=_number(0.0, maximum=1.0), default=None, help="floor for layer scales")
    ex.add_argument("--rules", metavar="FILE", default=None,
                    help="options from a TOML/JSON/YAML rule file (see docs/rules.md); flags given here win")
    ex.add_argument("--no-weight-decay", action="append", default=None, metavar="PATTERN",
                    help="exclude parameters matching PATTERN from weight decay (repeatable)")
    ex.add_argument("--lr-mult", action="append", type=_lr_mult_item, default=None, metavar="PATTERN=MULT",
                    help="extra lr multiplier for parameters matching PATTERN, e.g. head=10 (repeatable)")
    ex.add_argument("--lr", type=_number(0.0, exclusive=True), default=None,
                    help="base lr (the top layer's), to show each layer's effective lr")
    ex.add_argument("--params", action="store_true", help="one row per parameter, with the reasons")
    ex.add_argument("--json", action="store_true", help="print the plan (or the comparison) as JSON")
    ex.add_argument("--plot", metavar="FILE", default=None,
                    help="draw the lr multiplier per layer into FILE (.png, .svg, .pdf); needs layerdecay[plot]")
    ex.add_argument("--compare", metavar="RECIPE", default=None,
                    help="show the plan under RECIPE beside the chosen one ('default' = the published recipe)")
    ex.add_argument("--strict", action="store_true", help="fail (exit 1) when the plan has warnings")

    sub.add_parser("plugins", help="list installed plugins, their distributions and hooks")
    return parser


def _recipe(text: str | None) -> str | None:
    return None if text in (None, "", "default") else text


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """explain() options: the rule file's, then the flags given on the command line over them."""
    from layerdecay.rules import load_rules

    options: dict[str, Any] = load_rules(args.rules) if args.rules else {}
    flags = {
        "layer_decay": args.layer_decay,
        "weight_decay": args.weight_decay,
        "min_scale": args.min_scale,
        "no_weight_decay": args.no_weight_decay,
        "lr_mult": dict(args.lr_mult) if args.lr_mult else None,
        "strict": True if args.strict else None,
        "recipe": args.recipe,
    }
    options.update({key: value for key, value in flags.items() if value is not None})
    options["recipe"] = _recipe(options.get("recipe"))
    return options


def _plan(model: Any, options: dict[str, Any], **override: Any) -> Any:
    from layerdecay.api import explain

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerDecayWarning)  # shown in the table / JSON instead
        return explain(model, **(options | override))


def _explain(args: argparse.Namespace) -> int:
    from layerdecay.models import build_model
    from layerdecay.render import compare_plans, print_comparison, print_plan

    if args.plot:
        from layerdecay.plot import require_matplotlib

        require_matplotlib()  # fail before the (possibly slow) model build
    options = _options(args)
    model = build_model(args.model)
    plan = _plan(model, options)
    other = _plan(model, options, recipe=_recipe(args.compare)) if args.compare is not None else None
    comparison = compare_plans(plan, other) if other is not None else None

    if args.json:
        data = comparison.to_dict() if comparison is not None else plan.to_dict()
        print(json.dumps(data, indent=2))
    elif comparison is not None:
        print_comparison(comparison, params=args.params)
    else:
        print_plan(plan, lr=args.lr, params=args.params)

    if args.plot:
        from layerdecay.plot import plot_plan

        try:
            plot_plan(plan, args.plot, compare=other, labels=comparison.labels if comparison else None)
        except OSError as exc:
            print(f"layerdecay: error: cannot write the plot to {args.plot}: {exc}", file=sys.stderr)
            return 1
        print(f"layerdecay: wrote {args.plot}", file=sys.stderr)
    return 0


def _plugins() -> int:
    from layerdecay.manager import create_plugin_host
    from layerdecay.render import format_table

    host = create_plugin_host()
    rows = [
        [p.name, p.source, f"{p.distribution} {p.version}" if p.distribution else "-", p.status,
         ", ".join(h.removeprefix("layerdecay_") for h in p.hooks) or "-"]
        for p in host.plugins
    ]
    print(format_table(["name", "source", "distribution", "status", "hooks"], rows, right=[False] * 5))
    failed = [p for p in host.plugins if p.error]
    for p in failed:
        print(f"\n{p.name}: {p.error}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's own exits become return values too)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "explain":
            return _explain(args)
        return _plugins()
    except BrokenPipeError:  # the reader (``| head``) went away: not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except ConfigError as exc:
        print(f"layerdecay: error: {exc}", file=sys.stderr)
        return 2
    except LayerDecayError as exc:
        print(f"layerdecay: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
