"""``python -m layerdecay``: the CLI."""

from layerdecay.cli import main

raise SystemExit(main())
