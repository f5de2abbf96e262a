from policy_distill.cli import main

raise SystemExit(main())
