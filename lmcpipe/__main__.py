import sys

from lmcpipe.client import main

sys.exit(main())
