"""Our reader-study figures against the FDA's iMRMC engine's stored output (fixtures/imrmc/).

Four simulated studies (fully crossed with two generators, raters missing 15 % of their reads,
three generators, and a 2-point confidence scale full of ties) were exported as `evaluate
ratings` exports them and analysed by iMRMC 4.0.3 (fixtures/imrmc/ENGINE.txt,
make_fixtures.py). The export must still write the stored input, and every rater's AUC must
equal the engine's. The engine's reader average weights each rater's AUC by the (real,
generated) pairs they read: our `MEAN` (the plain mean over raters) equals it when every
rater read every tile, and the pair-weighted mean of our AUCs equals it always.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from evaluator.ratings.reader_metrics import imrmc_frame, imrmc_input, roc_auc_table
from evaluator.ratings.votes import validate_votes, vote_matrix

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "imrmc"
DESIGNS = sorted(path.name for path in FIXTURES.iterdir() if (path / "engine").is_dir())
PRINTED = 1e-8  # the engine writes 9 significant digits


def engine_table(design: str, name: str) -> pd.DataFrame:
    table = pd.read_csv(FIXTURES / design / "engine" / name)
    return table[table["modalityB"] == "NO_MOD"]  # one generator against the real tiles


@pytest.mark.parametrize("design", DESIGNS)
def test_each_raters_auc_and_the_average_equal_the_engines(design: str) -> None:
    matrix = vote_matrix(validate_votes(pd.read_csv(FIXTURES / design / "votes.csv")))
    assert imrmc_input(imrmc_frame(matrix)) == (FIXTURES / design / "input.imrmc").read_text(encoding="utf-8")
    ours = roc_auc_table(matrix, n_bootstrap=10).set_index(["source", "rater"])
    readers = engine_table(design, "AUCperReader.csv")
    assert len(readers) == ours.index.get_level_values("rater").difference(["MEAN"]).size * len(
        set(readers["modalityA"])
    )
    for row in readers.itertuples():
        assert ours.loc[(row.modalityA, row.readerID), "auc"] == pytest.approx(row.AUCA, abs=PRINTED)
    crossed = design != "missing-reads"
    for row in engine_table(design, "statAnalysis.csv").itertuples():
        raters = ours.loc[row.modalityA].drop(index="MEAN")
        pairs = raters["n_real_tiles"] * raters["n_tiles"]  # the (real, generated) pairs each read
        weighted = (raters["auc"] * pairs).sum() / pairs.sum()
        assert weighted == pytest.approx(row.AUCA, abs=PRINTED)
        plain = ours.loc[(row.modalityA, "MEAN"), "auc"]
        assert (plain == pytest.approx(row.AUCA, abs=PRINTED)) == crossed
