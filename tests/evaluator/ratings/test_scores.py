"""Expert rating scores, Fleiss' kappa and the votes format, checked against published values,
statsmodels, and sums done by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss_kappa

from evaluator.ratings.scores import (
    MEAN_CLASSES,
    expert_scores,
    fleiss_kappa,
    kappa_tables,
    rater_scores,
)
from evaluator.ratings.votes import VotesError, read_votes, validate_votes, vote_matrix
from histosynth.tables import ALL_CLASSES

# Fleiss (1971), Table 1: 30 patients, 6 psychiatrists each, 5 diagnoses
# (depression, personality disorder, schizophrenia, neurosis, other); counts per patient.
FLEISS_1971 = np.array(
    [
        [0, 0, 0, 6, 0], [0, 3, 0, 0, 3], [0, 1, 4, 0, 1], [0, 0, 0, 0, 6], [0, 3, 0, 3, 0],
        [2, 0, 4, 0, 0], [0, 0, 4, 0, 2], [2, 0, 3, 1, 0], [2, 0, 0, 4, 0], [0, 0, 0, 0, 6],
        [1, 0, 0, 5, 0], [1, 1, 0, 4, 0], [0, 3, 3, 0, 0], [1, 0, 0, 5, 0], [0, 2, 0, 3, 1],
        [0, 0, 5, 0, 1], [3, 0, 0, 1, 2], [5, 1, 0, 0, 0], [0, 2, 0, 4, 0], [1, 0, 2, 0, 3],
        [0, 0, 0, 0, 6], [0, 1, 0, 5, 0], [0, 2, 0, 1, 3], [2, 0, 0, 4, 0], [1, 0, 0, 4, 1],
        [0, 5, 0, 1, 0], [4, 0, 0, 0, 2], [0, 2, 0, 4, 0], [1, 0, 5, 0, 0], [0, 0, 0, 0, 6],
    ]
)  # fmt: skip

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories.
WIKIPEDIA = np.array(
    [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
)  # fmt: skip


def test_fleiss_1971_matches_irr_kappam_fleiss() -> None:
    # R: irr::kappam.fleiss(diagnoses) -> Kappa = 0.4302445, z = 17.65183, p-value = 0;
    # with detail = TRUE the category-wise kappas of Fleiss (1971): .245 .245 .520 .471 .566
    # and z 5.192 5.192 11.031 9.994 12.009.
    result = fleiss_kappa(FLEISS_1971)
    assert result.kappa == pytest.approx(0.4302445, abs=5e-8)
    assert result.z == pytest.approx(17.65183, abs=5e-6)
    assert result.p < 1e-60
    assert (result.n_subjects, result.n_raters) == (30, 6)
    assert result.note == ""
    np.testing.assert_allclose(result.per_category["kappa"], [0.245, 0.245, 0.520, 0.471, 0.566], atol=5e-4)
    np.testing.assert_allclose(result.per_category["z"], [5.192, 5.192, 11.031, 9.994, 12.009], atol=5e-4)


def test_wikipedia_example_and_statsmodels_agree() -> None:
    result = fleiss_kappa(WIKIPEDIA)
    assert round(result.kappa, 3) == 0.210  # Wikipedia: P_bar = 0.378, P_e = 0.213, kappa = 0.210
    rng = np.random.default_rng(3)
    for n_categories in (2, 3, 7):
        table = rng.multinomial(5, rng.dirichlet(np.ones(n_categories)), size=40)
        assert fleiss_kappa(table).kappa == pytest.approx(statsmodels_fleiss_kappa(table, method="fleiss"))


def test_standard_error_matches_the_spread_of_kappa_under_h0() -> None:
    # Independent check of Fleiss, Nee & Landis (1979): simulate raters who agree only by chance.
    rng = np.random.default_rng(11)
    p, n_raters, n_subjects = np.array([0.5, 0.3, 0.2]), 4, 300
    tables = rng.multinomial(n_raters, p, size=(4000, n_subjects))
    observed = ((tables * (tables - 1)).sum(axis=2) / (n_raters * (n_raters - 1))).mean(axis=1)
    margins = tables.sum(axis=1) / (n_subjects * n_raters)
    chance = (margins**2).sum(axis=1)
    kappas = (observed - chance) / (1 - chance)
    assert fleiss_kappa(tables[0]).se == pytest.approx(kappas.std(), rel=0.06)


def test_degenerate_tables_answer_clearly() -> None:
    everyone_real = fleiss_kappa(pd.DataFrame({"real": [3, 3, 3], "synthetic": [0, 0, 0]}))
    assert np.isnan(everyone_real.kappa) and np.isnan(everyone_real.z)
    assert "all ratings fall in category 'real'" in everyone_real.note
    assert everyone_real.per_category["note"].str.contains("undefined").all()
    with pytest.raises(VotesError, match="same number of ratings for every subject; rows have 2 to 3"):
        fleiss_kappa([[1, 1], [2, 1]])
    with pytest.raises(VotesError, match="at least 2 ratings"):
        fleiss_kappa([[1, 0], [0, 1]])
    with pytest.raises(VotesError, match="non-negative integer"):
        fleiss_kappa([[3, -1], [1, 1]])
    with pytest.raises(VotesError, match="non-empty"):
        fleiss_kappa(np.zeros((0, 2)))


def test_unused_category_has_no_kappa_but_does_not_spoil_the_rest() -> None:
    table = np.column_stack([FLEISS_1971, np.zeros(30, dtype=int)])
    result = fleiss_kappa(table)
    assert result.kappa == pytest.approx(0.4302445, abs=5e-8)
    assert np.isnan(result.per_category["kappa"].iloc[-1])


def votes_frame(rows: list[tuple[str, str, str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["rater", "item", "class", "source", "vote"])


def hand_example() -> pd.DataFrame:
    """Class X: 4 real and 4 G tiles; class Y: 2 real and 3 G tiles (unequal cells).

    A calls 3/4 real and 1/4 G tiles of X real, 2/2 real and 0/3 G tiles of Y real;
    B calls 2/4 and 2/4 (X), 1/2 and 3/3 (Y); C calls every tile real.
    """
    rows = []
    calls = {
        "A": {("X", "real"): 3, ("X", "G"): 1, ("Y", "real"): 2, ("Y", "G"): 0},
        "B": {("X", "real"): 2, ("X", "G"): 2, ("Y", "real"): 1, ("Y", "G"): 3},
        "C": {("X", "real"): 4, ("X", "G"): 4, ("Y", "real"): 2, ("Y", "G"): 3},
    }
    sizes = {("X", "real"): 4, ("X", "G"): 4, ("Y", "real"): 2, ("Y", "G"): 3}
    for rater, called in calls.items():
        for (klass, source), size in sizes.items():
            for index in range(size):
                vote = "real" if index < called[(klass, source)] else "synthetic"
                rows.append((rater, f"{klass}-{source}-{index}", klass, source, vote))
    return votes_frame(rows)


def test_expert_score_by_hand_including_a_rater_who_calls_everything_real() -> None:
    matrix = vote_matrix(validate_votes(hand_example()))
    per_rater = rater_scores(matrix).set_index(["class", "rater"])["score"]
    assert per_rater[("X", "A")] == pytest.approx(1 / 4 - 3 / 4)
    assert per_rater[("X", "B")] == pytest.approx(0.0)
    assert per_rater[("X", "C")] == pytest.approx(0.0)  # everything real: 4/4 - 4/4
    assert per_rater[("Y", "A")] == pytest.approx(0 / 3 - 2 / 2)  # fractions, not counts
    assert per_rater[("Y", "B")] == pytest.approx(3 / 3 - 1 / 2)

    table = expert_scores(matrix).set_index("class")
    x_scores, y_scores = [-0.5, 0.0, 0.0], [-1.0, 0.5, 0.0]
    overall = [(-0.5 - 1.0) / 2, (0.0 + 0.5) / 2, 0.0]  # each rater's classes averaged first
    for klass, scores in (("X", x_scores), ("Y", y_scores), (ALL_CLASSES, overall)):
        mean = sum(scores) / 3
        std = (sum((s - mean) ** 2 for s in scores) / 2) ** 0.5
        assert table.loc[klass, "score_mean"] == pytest.approx(mean)
        assert table.loc[klass, "score_std"] == pytest.approx(std)
        assert table.loc[klass, "n_raters"] == 3
    assert table.loc["Y", "n_tiles"] == 3 and table.loc["Y", "n_real_tiles"] == 2
    assert table.loc[ALL_CLASSES, "n_tiles"] == 7 and table.loc[ALL_CLASSES, "n_real_tiles"] == 6
    population = expert_scores(matrix, ddof=0).set_index("class")
    assert population.loc["X", "score_std"] == pytest.approx(np.std(x_scores))


def test_paper_formula_with_ten_tiles_per_cell() -> None:
    # score = mean_i (n_g(i)/N - n_r(i)/N), N = 10, for counts chosen at random.
    rng = np.random.default_rng(5)
    called = {rater: (int(rng.integers(0, 11)), int(rng.integers(0, 11))) for rater in "ABC"}
    rows = []
    for rater, (n_generated, n_real) in called.items():
        for index in range(10):
            rows.append(
                (rater, f"g{index}", "TUM", "KLF8-DM", "real" if index < n_generated else "synthetic")
            )
            rows.append((rater, f"r{index}", "TUM", "real", "real" if index < n_real else "synthetic"))
    table = expert_scores(vote_matrix(validate_votes(votes_frame(rows))))
    expected = np.mean([g / 10 - r / 10 for g, r in called.values()])
    assert table.loc[table["class"] == "TUM", "score_mean"].item() == pytest.approx(expected)


def test_kappa_tables_pool_and_average_over_classes() -> None:
    rng = np.random.default_rng(2)
    rows = [
        (rater, f"{klass}-{source}-{index}", klass, source, "real" if rng.random() < 0.6 else "synthetic")
        for rater in ("A", "B", "C")
        for klass in ("X", "Y")
        for source in ("real", "G")
        for index in range(6)
    ]
    matrix = vote_matrix(validate_votes(votes_frame(rows)))
    kappas, categories = kappa_tables(matrix)
    kappas = kappas.set_index(["source", "class"])
    votes = pd.DataFrame(rows, columns=["rater", "item", "class", "source", "vote"])

    def table_of(subset: pd.DataFrame) -> np.ndarray:
        real = subset.groupby("item")["vote"].apply(lambda v: (v == "real").sum())
        return np.column_stack([real, 3 - real])

    for source in ("G", "real"):
        mine = votes[votes["source"] == source]
        per_class = [fleiss_kappa(table_of(mine[mine["class"] == k])) for k in ("X", "Y")]
        pooled = fleiss_kappa(table_of(mine))
        assert kappas.loc[(source, "X"), "kappa"] == pytest.approx(per_class[0].kappa)
        assert kappas.loc[(source, ALL_CLASSES), "kappa"] == pytest.approx(pooled.kappa)
        assert kappas.loc[(source, ALL_CLASSES), "z"] == pytest.approx(pooled.z)
        mean = kappas.loc[(source, MEAN_CLASSES)]
        assert mean["kappa"] == pytest.approx((per_class[0].kappa + per_class[1].kappa) / 2)
        assert mean["se"] == pytest.approx(np.hypot(per_class[0].se, per_class[1].se) / 2)
        assert mean["z"] == pytest.approx(mean["kappa"] / mean["se"])
        assert "se assumes the classes' kappas are independent" in mean["note"]
    assert set(categories["category"]) == {"real", "synthetic"}
    assert len(categories) == 2 * 2 * 3  # sources x (X, Y, ALL) x categories


def test_kappa_table_notes_tiles_not_rated_by_everyone() -> None:
    rows = [(r, f"{s}{i}", "X", s, "real") for r in "AB" for s in ("real", "G") for i in range(3)]
    rows += [("A", "t9", "X", "G", "synthetic")]
    kappas, _ = kappa_tables(vote_matrix(validate_votes(votes_frame(rows))))
    generated = kappas.set_index(["source", "class"]).loc[("G", "X")]
    assert (
        generated["n_dropped"] == 1
        and "1 tiles not rated by every counted rater left out" in generated["note"]
    )
    assert "all ratings fall in category 'real'" in generated["note"]


def three_raters_and_a_straggler(extra: int, seed: int = 4) -> list[tuple[str, str, str, str, str]]:
    """A, B and C rate 50 real and 50 G tiles of class X; D rates the first `extra` of each source."""
    rng = np.random.default_rng(seed)
    rows = [
        (rater, f"{source}{index}", "X", source, "real" if rng.random() < 0.6 else "synthetic")
        for rater in "ABC"
        for source in ("real", "G")
        for index in range(50)
    ]
    rows += [
        ("D", f"{source}{index}", "X", source, "real") for source in ("real", "G") for index in range(extra)
    ]
    return rows


def test_kappa_keeps_every_tile_when_one_rater_rated_only_a_few() -> None:
    # Keeping only the tiles rated by the most raters left 3 tiles of 100 (1 real, 2 G) and
    # dropped 97: the three complete raters' table is the one to use.
    rows = three_raters_and_a_straggler(extra=0)
    rows += [
        ("D", "real0", "X", "real", "real"),
        ("D", "G0", "X", "G", "real"),
        ("D", "G1", "X", "G", "real"),
    ]
    kappas, _ = kappa_tables(vote_matrix(validate_votes(votes_frame(rows))))
    kappas = kappas.set_index(["source", "class"])
    votes = votes_frame(rows)
    for source in ("real", "G"):
        complete = votes[(votes["source"] == source) & (votes["rater"] != "D")]
        table = pd.crosstab(complete["item"], complete["vote"]).reindex(columns=["real", "synthetic"])
        expected = statsmodels_fleiss_kappa(table.fillna(0).to_numpy(), method="fleiss")
        for klass in ("X", ALL_CLASSES, MEAN_CLASSES):
            row = kappas.loc[(source, klass)]
            assert row["kappa"] == pytest.approx(expected)
            assert (row["n_tiles"], row["n_raters"], row["n_dropped"]) == (50, 3, 0)
            assert row["raters_left_out"] == "D"
        assert "raters who rated only some tiles left out: D" in kappas.loc[(source, "X"), "note"]


@pytest.mark.parametrize(
    ("extra", "n_raters", "n_tiles", "left_out"),
    [(45, 4, 45, ""), (30, 3, 50, "D")],  # 4 x 45 = 180 > 3 x 50 = 150 > 4 x 30 = 120 ratings
)
def test_kappa_design_keeps_the_most_ratings(extra: int, n_raters: int, n_tiles: int, left_out: str) -> None:
    kappas, _ = kappa_tables(vote_matrix(validate_votes(votes_frame(three_raters_and_a_straggler(extra)))))
    row = kappas.set_index(["source", "class"]).loc[("G", "X")]
    assert (row["n_raters"], row["n_tiles"], row["n_dropped"]) == (n_raters, n_tiles, 50 - n_tiles)
    assert row["raters_left_out"] == left_out


def write_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "votes.csv"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = "rater,item,class,source,vote\nA,i1,ADI,real,real\nA,i2,ADI,KLF8-DM,synthetic\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rater,item,class,vote\nA,i1,ADI,real\n", r"votes\.csv: missing column 'source'"),
        (GOOD + "A,i3,ADI,real,maybe\n", r"votes\.csv line 4: vote 'maybe' is not 'real' or 'synthetic'"),
        (
            GOOD + "A,i1,ADI,real,synthetic\n",
            r"votes\.csv line 4: rater 'A' rated twice without repeat=1 item 'i1'",
        ),
        (GOOD + "A,i3,ADI,real,\n", r"votes\.csv line 4: empty 'vote'"),
        (
            GOOD + "B,i1,TUM,real,real\n",
            r"votes\.csv line 4: item 'i1' has class 'TUM' here but 'ADI' elsewhere",
        ),
        ("rater,item,class,source,vote\nA,i1,ADI,real,real\n", r"no votes on generated tiles"),
        ("rater,item,class,source,vote\nA,i1,ADI,G,real\n", r"no votes on real tiles \(source 'real'\)"),
        (GOOD + "A,i3,TUM,G,real\n", r"votes\.csv line 4: class 'TUM' has generated tiles but no real tiles"),
        ("rater,item,class,source,vote,confidence\nA,i1,ADI,real,real,7\n", r"line 2: confidence '7' is not"),
        (
            "rater,item,class,source,vote,confidence\nA,i1,ADI,real,real,\nA,i2,ADI,G,real,3\n",
            r"line 2: empty 'confi",
        ),
        (
            "rater,item,class,source,vote,repeat\nA,i1,ADI,real,real,1\nA,i2,ADI,G,real,0\n",
            r"line 2: repeat of",
        ),
        (
            "rater,item,class,source,vote,seconds\nA,i1,ADI,real,real,-2\nA,i2,ADI,G,real,1\n",
            r"seconds '-2' is not",
        ),
        ("rater,item,class,source,vote\n", r"votes\.csv: no votes"),
        (GOOD + "A,i3,ALL,real,real\n", r"line 4: class 'ALL' is reserved for summary rows"),
    ],
)
def test_bad_votes_files_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(VotesError, match=message) as caught:
        read_votes(write_csv(tmp_path, text))
    assert "\n" not in str(caught.value)


def test_repeats_are_allowed_once_and_fields_normalised(tmp_path: Path) -> None:
    text = (
        "rater,item,class,source,vote,confidence,repeat,seconds,extra\n"
        " A ,i1,ADI,real,real,6,0,1.5,x\nA,i2,ADI,G,synthetic,2,0,,y\nA,i1,ADI,real,synthetic,1,1,3,z\n"
    )
    votes = read_votes(write_csv(tmp_path, text))
    assert list(votes.columns) == [
        "rater",
        "item",
        "class",
        "source",
        "vote",
        "confidence",
        "repeat",
        "seconds",
        "position",
        "simulated",
    ]
    assert votes["rater"].tolist() == ["A", "A", "A"]
    assert votes["simulated"].tolist() == [0, 0, 0]  # absent: people
    assert votes["repeat"].tolist() == [0, 0, 1]
    assert votes["confidence"].tolist() == [6.0, 2.0, 1.0]
    assert np.isnan(votes["seconds"].iloc[1]) and np.isnan(votes["position"]).all()
    with pytest.raises(VotesError, match="line 5: rater 'A' repeated twice item 'i1'"):
        read_votes(write_csv(tmp_path, text + "A,i1,ADI,real,real,1,1,3,z\n"))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(VotesError, match="nowhere.csv: votes file not found"):
        read_votes(tmp_path / "nowhere.csv")


def test_dataframe_input_with_nullable_integers_is_accepted() -> None:
    frame = pd.DataFrame(
        {
            "rater": ["A", "A"],
            "item": [1, 2],
            "class": ["ADI", "ADI"],
            "source": ["real", "G"],
            "vote": ["real", "synthetic"],
            "confidence": pd.array([3, 5], dtype="Int64"),
            "repeat": [0, 0],
            "seconds": [1.0, None],
            "position": [1, 2],
        }
    )
    votes = validate_votes(frame)
    assert votes["item"].tolist() == ["1", "2"]
    assert votes["confidence"].tolist() == [3.0, 5.0]
    matrix = vote_matrix(votes)
    assert matrix.items == ["2", "1"]  # sorted by class, source ("G" < "real"), item
    assert matrix.signed_confidence.tolist() == [[-5.0, 3.0]]


def test_a_rater_is_simulated_on_all_their_votes_or_on_none(tmp_path: Path) -> None:
    text = "rater,item,class,source,vote,simulated\nA,i1,ADI,real,real,1\nA,i2,ADI,G,synthetic,0\n"
    with pytest.raises(VotesError, match="line 3: rater 'A' is simulated on some votes, not on others"):
        read_votes(write_csv(tmp_path, text))
    with pytest.raises(VotesError, match="line 2: simulated 'yes' is not an integer in 0..1"):
        read_votes(write_csv(tmp_path, text.replace("real,1", "real,yes")))
    marked = read_votes(
        write_csv(tmp_path, text.replace("synthetic,0", "synthetic,1") + "B,i1,ADI,real,real,\n")
    )
    assert marked["simulated"].tolist() == [1, 1, 0]  # an empty cell: a person
