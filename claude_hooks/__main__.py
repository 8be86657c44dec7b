from claude_hooks.cli.main import main

raise SystemExit(main())
