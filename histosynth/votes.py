"""The votes interchange: the words and columns both apps agree on.

`histosynth study export` writes these columns and `histosynth evaluate ratings --votes` reads
them; ratings from any other tool in this format evaluate the same way (DESIGN: Votes interchange).
"""

from __future__ import annotations

REAL_SOURCE = "real"  # the source holding the real tiles, in study TOMLs and votes files
REAL_VOTE = "real"
SYNTHETIC_VOTE = "synthetic"
VOTE_VALUES = (REAL_VOTE, SYNTHETIC_VOTE)
REQUIRED_COLUMNS = ("rater", "item", "class", "source", "vote")
# `simulated` is 1 on the votes of a simulated rater (`histosynth study simulate`), else 0.
OPTIONAL_COLUMNS = ("confidence", "repeat", "seconds", "position", "simulated")
VOTE_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
