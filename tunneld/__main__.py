from tunneld.cli import main

raise SystemExit(main())
