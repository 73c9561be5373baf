from canarykit.cli import main

raise SystemExit(main())
