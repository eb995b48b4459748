"""The search spaces that ship with ple-search (``--study census|synthetic``) and the commented example."""
