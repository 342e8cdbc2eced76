"""The command line's commands, one module per command (group): each turns what the user typed into
the options of a stage and reports the result. ctr2svc.cli gathers them under `ctr2svc`.
"""
