"""nlpkit: a command-line toolbox for language work, built as small Unix-style commands.

Importing nlpkit is cheap: nothing heavy (numpy, torch, tokenizers) is imported here.
The Python API lives in the rooms (``nlpkit.io``, ``nlpkit.store``, ``nlpkit.vectors``, ``nlpkit.lm``,
``nlpkit.llm``, ``nlpkit.rag``, ...); the README's design section draws the tree.
"""

__version__ = "0.1.0"
