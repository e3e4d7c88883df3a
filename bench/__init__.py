"""Benchmarks: schemad against `alembic upgrade head` and the raw-SQL floor.

Not tests: nothing here asserts a timing. ``python -m bench`` (``make bench``)
runs every case of issue 6 and prints a table of the targets; ``--quick`` is
the smoke run. ``python bench/noop_pass.py`` measures the daemon's no-op pass
alone.

- histories.py  generated Alembic projects (linear, branched) and the floor SQL
- databases.py  fresh databases on the shared servers, the floor's CLI commands
- processes.py  a tool as a process: wall time, exit code, peak RSS
- cases.py      the cases; every sample goes into Results
- report.py     the tables and the targets
- harness.py    the command line
- noop_pass.py  the no-op pass inside one process (also a script)
"""
