"""mpo: classic SPO/MPO, learned DMPO policies and benchmarks in one simulator."""

import logging

__version__ = "0.1.0.dev0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
