import sys

from peakwise.cli import main

sys.exit(main())
