import sys

from tillstream.cli import main

sys.exit(main())
