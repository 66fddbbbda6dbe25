"""``python -m app``: the command line (``app.cli``)."""

from app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
