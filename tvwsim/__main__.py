from tvwsim.cli import main

raise SystemExit(main())
