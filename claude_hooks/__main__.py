from claude_hooks.cli import main

raise SystemExit(main())
