"""The command line: ``app`` owns the Typer app, ``main`` registers every command family;
one module per family, glue only (flags in, one library call, records out).
"""
