import sys

from anomseg.cli import main

sys.exit(main())
