"""The ``layerdecay`` command: ``explain`` a model's plan, list ``plugins``.

Exit codes: 0 ok, 1 the model could not be built or planned (the reason is printed), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from layerdecay.errors import ConfigError, LayerDecayError, LayerDecayWarning


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="layerdecay", description="Layer-wise lr decay plans for any model.")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("explain", help="print the plan of a model (built on the meta device)")
    ex.add_argument("model", help="timm:<name>, torchvision:<name>, transformers:<Class>, "
                                  "path/to/config.json, or package.module:factory")
    ex.add_argument("--layer-decay", type=float, default=0.75)
    ex.add_argument("--weight-decay", type=float, default=0.05)
    ex.add_argument("--recipe", default=None, help="recipe of the owning plugin (default: the published one)")
    ex.add_argument("--lr", type=float, default=None, help="base lr, to show each layer's effective lr")
    ex.add_argument("--params", action="store_true", help="one row per parameter, with the reasons")
    ex.add_argument("--json", action="store_true", help="print the plan as JSON")

    sub.add_parser("plugins", help="list installed plugins, their distributions and hooks")
    return parser


def _explain(args: argparse.Namespace) -> int:
    from layerdecay.api import explain
    from layerdecay.models import build_model

    model = build_model(args.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerDecayWarning)  # shown in the table / JSON instead
        plan = explain(model, layer_decay=args.layer_decay, weight_decay=args.weight_decay, recipe=args.recipe)
    if args.json:
        print(plan.to_json(indent=2))
    else:
        print(plan.table(lr=args.lr, params=args.params))
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
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "explain":
            return _explain(args)
        return _plugins()
    except ConfigError as exc:
        print(f"layerdecay: error: {exc}", file=sys.stderr)
        return 2
    except LayerDecayError as exc:
        print(f"layerdecay: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
