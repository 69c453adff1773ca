"""What developers, tests, benchmarks and the demo use; never imported by an agent.

* :mod:`.sim`: simulators of the peers (the pysmurf publisher, DUNE writers and clients, an
  SNTP server). The smurf simulator writes G3 files, so this needs the ``sim`` extra (so3g).
* :mod:`.testing`: a real crossbar hub and agent processes for tests and benchmarks.
* :mod:`.demo` and :mod:`.showcases`: ``make demo``.
"""
