from rtcproctor.cli import main

raise SystemExit(main())
