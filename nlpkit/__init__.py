"""nlpkit: a command-line toolbox for language work, built as small Unix-style commands.

Importing nlpkit is cheap: nothing heavy (numpy, torch, tokenizers) is imported here.
The Python API lives in the modules: ``nlpkit.vectors``, ``nlpkit.formats``, ``nlpkit.store``.
"""

__version__ = "0.1.0"
