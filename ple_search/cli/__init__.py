"""The ``ple-search`` command line (imports as ``ple_search.cli``)."""
