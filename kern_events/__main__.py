"""``python -m kern_events``: the same command as the ``kern-events`` console script."""

from kern_events.cli import main

raise SystemExit(main())
