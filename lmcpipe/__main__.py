import sys

from lmcpipe.cli import main

sys.exit(main())
