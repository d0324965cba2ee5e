from spectrakit.cli import main

raise SystemExit(main())
