"""Two runs side by side: ``mlkit diff A B``.

``runs`` resolves the references (run ids, prefixes, folders, ``STUDY#N``) and reads each
record once; ``sections`` computes the differences as plain data; ``code`` asks git for
the diff between the commits; ``notebooks`` diffs the executed notebooks with nbdime;
``diff`` assembles the comparison; ``render`` prints it, ``html`` writes it as one page.
"""

from mlkit.compare.diff import compare, compare_sides
from mlkit.compare.runs import Side, load, resolve

__all__ = ["Side", "compare", "compare_sides", "load", "resolve"]
