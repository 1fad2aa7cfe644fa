"""The blocks of a rater's order, for the progress bars and the pause between blocks.

In a study rated class by class (`block_by_class`) a rater's order is one block per class, in
the study's class order, and then the repeated showings in a block of their own; each block is a
run of consecutive positions. A study rated in one shuffle has no blocks to show.

A block's title names its class: every tile of a class block has that class, real and synthetic
alike, so the name tells the rater nothing about a tile's source (docs/threat-model.md). The
final block of repeats mixes every class and is titled neutrally, "all classes", rather than
"repeats": it is recognisable by its place anyway, but the page need not prompt a rater to
answer a second showing the way they answered the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MIXED_BLOCK = "all classes"  # the title of the final block of repeated showings


@dataclass(frozen=True)
class Block:
    """A run of consecutive positions: its place among the blocks, its class, first and last position."""

    number: int  # 1-based
    class_name: str | None  # None for the final block of repeated showings
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1

    def title(self, n_blocks: int) -> str:
        """How the page names the block, e.g. "Block 2 of 9 (ADI)"."""
        return f"Block {self.number} of {n_blocks} ({self.class_name or MIXED_BLOCK})"

    def answered(self, frontier: int | None) -> int:
        """How many of the block's tiles are answered, given the first unanswered position."""
        if frontier is None:
            return self.size
        return min(max(frontier - self.first, 0), self.size)


def order_blocks(showings: Sequence[tuple[str, int]], block_by_class: bool) -> list[Block]:
    """The blocks of an order given (class, repeat) per position; [] when not rated by class.

    Args:
        showings: the class of each position's item and whether it is a repeated showing, from
            position 1 on.
        block_by_class: whether the study is rated class by class.
    """
    if not block_by_class:
        return []
    blocks: list[Block] = []
    for position, (class_name, repeat) in enumerate(showings, start=1):
        label = None if repeat else class_name
        if blocks and blocks[-1].class_name == label and blocks[-1].last == position - 1:
            last = blocks[-1]
            blocks[-1] = Block(last.number, label, last.first, position)
        else:
            blocks.append(Block(len(blocks) + 1, label, position, position))
    return blocks


def block_at(blocks: Sequence[Block], position: int) -> Block | None:
    """The block holding `position`, or None when there are no blocks."""
    return next((block for block in blocks if block.first <= position <= block.last), None)
