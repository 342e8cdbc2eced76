"""The build's options, checked once at the boundary before anything is pulled or written.

Each entry point (the command line, a project file's image, a compose file's service) gives them raw,
in its own terms (build_options.BuildOptions); request.resolve() checks them, each value by
values.py's parsers and each number by ranges.py's limits, and parses them into the BuildRequest the
stages take.
"""
