import sys

from lane.cli import main

sys.exit(main())
