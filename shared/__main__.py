"""`python -m shared ...`: the admin command line (see `python -m shared --help`)."""

from shared.admin.cli import main

raise SystemExit(main())
