"""mailgate's benchmark, split by job so each piece can be read (and fixed) on its own.

``run.py`` is the entry point (``.venv/bin/python bench/run.py --help``); the other modules
are: ``common`` (constants, logging, process and port helpers every module needs),
``systems`` (starting and stopping each system under test and its sink), ``haraka``
(installing and configuring Haraka from npm), ``messages`` (the workloads and the bombs),
``load`` (the load generators: smtp-source, the latency probe, the asyncio client),
``throughput`` (one measured pass of one system), ``memory`` (RSS: the 20 MiB message and
the bombs) and ``report`` (tables, ratios, targets, the JSON document).
"""
