from canarykit.cli.main import main

raise SystemExit(main())
