"""The build's options: given raw by each entry point (the command line, project files, compose files),
checked once at that boundary before anything is pulled or written.
"""
