"""The command lines: one module per `structinit` subcommand (HELP, add_arguments, run; cli.py
puts them together), the options they share (options.py), and the study scripts' (study.py)."""
