"""Votes in the interchange format: reading, checking, and the rater x tile vote matrix.

A votes table has one row per vote: `rater,item,class,source,vote` plus the optional
`confidence`, `repeat`, `seconds` and `position` columns (see DESIGN.md). Every statistic in
the evaluator starts from a table that passed `validate_votes`, so the checks live here once:
a bad file is refused with one line naming the file, the line and the field, never repaired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from histosynth.errors import HistosynthError
from histosynth.votes import REAL_SOURCE, REAL_VOTE, REQUIRED_COLUMNS, VOTE_VALUES

# Summary rows of the output tables ("ALL" classes, the "MEAN" over classes or raters) use
# these names, so no class or rater may carry them.
RESERVED_NAMES = ("ALL", "MEAN")


class VotesError(HistosynthError):
    """A votes table is malformed: a missing column, an unknown value, a duplicate vote."""


@dataclass(frozen=True)
class VoteMatrix:
    """First-presentation votes as a dense rater x item matrix, the shape every statistic needs.

    Attributes:
        raters: rater names, in matrix row order.
        items: item ids, in matrix column order (sorted by class, source, item).
        item_class: the class of each item.
        item_source: the source of each item (`real` or a generator name).
        called_real: float matrix, 1 where the rater called the item real, 0 where synthetic,
            NaN where the rater did not rate it.
        signed_confidence: float matrix of +confidence for "real" votes and -confidence for
            "synthetic" votes (NaN where missing); None when the study has no confidence ratings.
    """

    raters: list[str]
    items: list[str]
    item_class: np.ndarray
    item_source: np.ndarray
    called_real: np.ndarray
    signed_confidence: np.ndarray | None

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.item_class.tolist()))

    @property
    def generators(self) -> list[str]:
        return sorted(set(self.item_source.tolist()) - {REAL_SOURCE})


def read_votes(path: str | Path) -> pd.DataFrame:
    """Read and check a votes CSV written by `histosynth study export` or any other tool.

    Args:
        path: CSV file with the columns `rater,item,class,source,vote[,confidence][,repeat]
            [,seconds][,position]`.

    Returns:
        The checked, normalised votes (see `validate_votes`).

    Raises:
        VotesError: the file is missing, empty, not CSV, or fails a check of `validate_votes`.
    """
    path = Path(path)
    if not path.is_file():
        raise VotesError(f"{path}: votes file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VotesError(f"{path}: not a readable votes CSV ({reason})") from error
    return validate_votes(frame, origin=str(path), first_row=2, row_word="line")


def validate_votes(
    frame: pd.DataFrame, origin: str = "votes", first_row: int = 0, row_word: str = "row"
) -> pd.DataFrame:
    """Check a votes table and return it normalised, refusing anything ambiguous.

    Checks: required columns present and non-empty; no rater or class named `ALL` or `MEAN`
    (the summary rows' names); `vote` is `real` or `synthetic`; `confidence` is an integer
    1..6 on every vote or on none; `repeat` is 0 or 1; `seconds` is a non-negative number;
    `position` a positive integer; `simulated` is 0 or 1 and the same on all of a rater's
    votes; every item has one class and one source; no rater rates an item twice unless the
    second is marked `repeat=1`, and every repeat has its first presentation; at least one
    real tile and one generator's tile, and real tiles in every class that has generated ones
    (an expert score compares the two).

    Args:
        frame: votes, one row per vote; columns beyond the known ones are ignored.
        origin: what to call the table in error messages (the file name for a CSV).
        first_row: the row number of the first data row in messages (2 for a CSV's line).
        row_word: "line" for files, "row" for in-memory tables.

    Returns:
        A new frame with the known columns only: strings for rater/item/class/source/vote,
        float `confidence` (NaN when absent), int `repeat`, float `seconds` (NaN when absent),
        float `position` (NaN when absent) and int `simulated` (0 when absent), in the input's
        row order, index 0..n-1.

    Raises:
        VotesError: with a one-line message naming `origin`, the row and the field.
    """
    missing = [name for name in REQUIRED_COLUMNS if name not in frame.columns]
    if missing:
        raise VotesError(f"{origin}: missing column {missing[0]!r} (need {','.join(REQUIRED_COLUMNS)})")
    if frame.empty:
        raise VotesError(f"{origin}: no votes")
    frame = frame.reset_index(drop=True)

    def where(index: int) -> str:
        return f"{origin} {row_word} {index + first_row}"

    out = pd.DataFrame(index=frame.index)
    codes: dict[str, np.ndarray] = {}
    for name in REQUIRED_COLUMNS:
        raw_codes, text = _distinct_text(frame[name])
        empty = np.flatnonzero((text == "")[raw_codes])
        if empty.size:
            raise VotesError(f"{where(int(empty[0]))}: empty {name!r}")
        # Distinct raw values may strip to the same text (" A" and "A"): code the text.
        text_codes, distinct = pd.factorize(text)
        codes[name] = text_codes[raw_codes]
        out[name] = np.asarray(distinct, dtype=object)[codes[name]]
    for name in ("rater", "class"):
        reserved = np.flatnonzero(out[name].isin(RESERVED_NAMES).to_numpy())
        if reserved.size:
            index = int(reserved[0])
            raise VotesError(f"{where(index)}: {name} {out[name].iloc[index]!r} is reserved for summary rows")
    unknown = np.flatnonzero(~out["vote"].isin(VOTE_VALUES).to_numpy())
    if unknown.size:
        index = int(unknown[0])
        raise VotesError(f"{where(index)}: vote {out['vote'].iloc[index]!r} is not 'real' or 'synthetic'")
    out["confidence"] = _numeric_column(frame, "confidence", where, integer=True, low=1, high=6)
    present = out["confidence"].notna().to_numpy()
    if present.any() and not present.all():
        raise VotesError(
            f"{where(int(np.flatnonzero(~present)[0]))}: empty 'confidence' although other votes have one"
        )
    repeat = _numeric_column(frame, "repeat", where, integer=True, low=0, high=1)
    out["repeat"] = repeat.fillna(0).astype(int)
    out["seconds"] = _numeric_column(frame, "seconds", where, integer=False, low=0.0, high=None)
    out["position"] = _numeric_column(frame, "position", where, integer=True, low=1, high=None)
    simulated = _numeric_column(frame, "simulated", where, integer=True, low=0, high=1)
    out["simulated"] = simulated.fillna(0).astype(int)
    _check_items(out, codes, where)
    _check_simulated_per_rater(out, codes, where)
    _check_duplicates(out, codes, where)
    sources = set(out["source"].unique())
    if REAL_SOURCE not in sources:
        raise VotesError(f"{origin}: no votes on real tiles (source {REAL_SOURCE!r})")
    if sources == {REAL_SOURCE}:
        raise VotesError(f"{origin}: no votes on generated tiles (every source is {REAL_SOURCE!r})")
    _check_classes_have_real_tiles(out, where)
    return out


def first_presentations(votes: pd.DataFrame) -> pd.DataFrame:
    """The votes without repeated presentations, which serve only intra-rater agreement."""
    return votes[votes["repeat"] == 0].reset_index(drop=True)


def with_positions(votes: pd.DataFrame) -> pd.DataFrame:
    """Fill `position` from each rater's row order where the table did not give it.

    Computed on the full table (repeats included) because a repeat also took a place in the
    rater's sequence.
    """
    out = votes.copy()
    order = out.groupby("rater", sort=False).cumcount() + 1
    out["position"] = out["position"].fillna(order.astype(float))
    return out


def rater_progress(votes: pd.DataFrame) -> pd.DataFrame:
    """How far each rater got: votes, distinct items, repeats, and whether they finished.

    A rater finished when they rated every item that appears in the table (first
    presentations), the only definition a votes file from any tool supports.

    Returns:
        One row per rater (sorted): rater, n_votes, n_items, n_repeats, n_items_total, finished,
        simulated.
    """
    first = votes[votes["repeat"] == 0]
    n_items_total = first["item"].nunique()
    grouped = votes.groupby("rater")
    progress = pd.DataFrame(
        {
            "n_votes": grouped.size(),
            "n_items": first.groupby("rater")["item"].nunique(),
            "n_repeats": grouped["repeat"].sum(),
        }
    ).fillna(0)
    progress = progress.astype(int).reset_index().rename(columns={"index": "rater"})
    progress["n_items_total"] = n_items_total
    progress["finished"] = progress["n_items"] == n_items_total
    progress["simulated"] = progress["rater"].isin(simulated_raters(votes))
    return progress.sort_values("rater", kind="stable").reset_index(drop=True)


def vote_matrix(votes: pd.DataFrame) -> VoteMatrix:
    """Pivot first-presentation votes into the rater x item matrix of `VoteMatrix`.

    Args:
        votes: checked votes (from `validate_votes`); repeated presentations are ignored.
    """
    first = first_presentations(votes)
    items = first.drop_duplicates("item")[["item", "class", "source"]]
    items = items.sort_values(["class", "source", "item"], kind="stable").reset_index(drop=True)
    raters = sorted(first["rater"].unique().tolist())
    rows = pd.Index(raters).get_indexer(first["rater"])
    cols = pd.Index(items["item"]).get_indexer(first["item"])
    called_real = np.full((len(raters), len(items)), np.nan)
    called_real[rows, cols] = (first["vote"] == REAL_VOTE).to_numpy(dtype=float)
    signed = None
    if first["confidence"].notna().all():
        signed = np.full_like(called_real, np.nan)
        sign = np.where(first["vote"] == REAL_VOTE, 1.0, -1.0)
        signed[rows, cols] = sign * first["confidence"].to_numpy(dtype=float)
    return VoteMatrix(
        raters=raters,
        items=items["item"].tolist(),
        item_class=items["class"].to_numpy(dtype=object),
        item_source=items["source"].to_numpy(dtype=object),
        called_real=called_real,
        signed_confidence=signed,
    )


def _distinct_text(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, stripped distinct strings): `text[codes]` is the column, missing values ''.

    Works on the distinct values only: a million votes hold a few thousand distinct strings.
    """
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    text = np.array([str(value).strip() for value in uniques] + [""], dtype=object)
    return codes, text


def _numeric_column(
    frame: pd.DataFrame,
    name: str,
    where: Callable[[int], str],
    integer: bool,
    low: float,
    high: float | None,
) -> pd.Series:
    """Parse an optional numeric column; empty cells become NaN, bad ones an error."""
    if name not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    column = frame[name]
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.astype(float).to_numpy()
        bad = ~np.isfinite(values) & ~np.isnan(values)
    else:
        codes, text = _distinct_text(column)
        parsed = pd.to_numeric(pd.Series(text).where(pd.Series(text) != "", None), errors="coerce")
        parsed = parsed.astype(float).to_numpy()
        values = parsed[codes]
        bad = ((text != "") & np.isnan(parsed))[codes]
    with np.errstate(invalid="ignore"):
        if integer:
            bad |= ~np.isnan(values) & (values != np.round(values))
        bad |= values < low
        if high is not None:
            bad |= values > high
    rows = np.flatnonzero(bad)
    if rows.size:
        index = int(rows[0])
        kind = "an integer" if integer else "a number"
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        shown = str(column.iloc[index]).strip()
        raise VotesError(f"{where(index)}: {name} {shown!r} is not {kind} in {bounds}")
    return pd.Series(values, index=frame.index, dtype=float)


def _check_items(votes: pd.DataFrame, codes: dict[str, np.ndarray], where: Callable[[int], str]) -> None:
    """Every item belongs to one class and one source, whoever rated it."""
    for field in ("class", "source"):
        clash, first_rows = _differing_from_first(codes["item"], codes[field])
        if clash.size:
            index = int(clash[0])
            first = votes[field].iloc[int(first_rows[index])]
            raise VotesError(
                f"{where(index)}: item {votes['item'].iloc[index]!r} has {field} "
                f"{votes[field].iloc[index]!r} here but {first!r} elsewhere"
            )


def _check_simulated_per_rater(
    votes: pd.DataFrame, codes: dict[str, np.ndarray], where: Callable[[int], str]
) -> None:
    """A rater is simulated or a person on every vote: a mix would hide which table is which."""
    clash, _ = _differing_from_first(codes["rater"], votes["simulated"].to_numpy())
    if clash.size:
        index = int(clash[0])
        raise VotesError(
            f"{where(index)}: rater {votes['rater'].iloc[index]!r} is simulated on some votes, not on others"
        )


def _differing_from_first(groups: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose value differs from their group's first row, and each row's first row.

    Args:
        groups: a non-negative integer code per row (the item, the rater).
        values: the value per row that must be the same within a group.
    """
    distinct, first_rows = np.unique(groups, return_index=True)
    position = np.empty(distinct.max() + 1, dtype=np.int64)
    position[distinct] = np.arange(distinct.size)
    first_of_row = first_rows[position[groups]]
    return np.flatnonzero(values != values[first_of_row]), first_of_row


def simulated_raters(votes: pd.DataFrame) -> list[str]:
    """The raters of checked votes whose votes are simulated (`histosynth study simulate`)."""
    return sorted(votes.loc[votes["simulated"] == 1, "rater"].unique().tolist())


def _check_classes_have_real_tiles(votes: pd.DataFrame, where: Callable[[int], str]) -> None:
    """Every class with generated tiles also has real ones.

    A generator's expert score is a difference to the real tiles of the same class, so such
    a class would give a score of NaN and an empty bootstrap; refuse it with the first row
    of the class instead.
    """
    with_real = set(votes.loc[votes["source"] == REAL_SOURCE, "class"].unique())
    lacking = np.flatnonzero(~votes["class"].isin(with_real).to_numpy())
    if lacking.size:
        index = int(lacking[0])
        klass = votes["class"].iloc[index]
        raise VotesError(f"{where(index)}: class {klass!r} has generated tiles but no real tiles")


def _check_duplicates(votes: pd.DataFrame, codes: dict[str, np.ndarray], where: Callable[[int], str]) -> None:
    """One first presentation and at most one repeat per rater and item."""
    repeat = votes["repeat"].to_numpy()
    pair = codes["rater"].astype(np.int64) * (codes["item"].max() + 1) + codes["item"]
    duplicated = np.flatnonzero(pd.Series(pair * 2 + repeat).duplicated().to_numpy())
    if duplicated.size:
        index = int(duplicated[0])
        row = votes.iloc[index]
        kind = "repeated twice" if row["repeat"] == 1 else "rated twice without repeat=1"
        raise VotesError(f"{where(index)}: rater {row['rater']!r} {kind} item {row['item']!r}")
    orphans = np.flatnonzero((repeat == 1) & ~np.isin(pair, pair[repeat == 0]))
    if orphans.size:
        index = int(orphans[0])
        row = votes.iloc[index]
        raise VotesError(
            f"{where(index)}: repeat of item {row['item']!r} by rater {row['rater']!r} "
            "without its first presentation"
        )
