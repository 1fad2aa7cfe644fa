"""`study audit`: check what a rater could learn about a tile's source, and fail loudly.

A blinded study is only as good as its weakest side channel. The audit re-reads every stored
PNG (format, pixel size, colour mode, chunks, padding, hash) and requires every tile to have
the same byte length (visible as Content-Length; smooth generated tiles compress better), checks
that ids and file names carry no provenance, recomputes every order a rater could derive from
the study TOML and the names (`rater_app.order_audit`) and requires each stored order to differ
from all of them and from every other rater's, and tests whether any rater's order is
associated with the source (Kruskal-Wallis on positions within each class block).
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from histosynth.images import PAPER_SIZE
from rater_app import store
from rater_app.order_audit import KnownItem, derivable_orders
from rater_app.padding import PAD_CHUNK
from rater_app.raters import stored_orders
from rater_app.store import Study, StudySettings, connect, image_store_dir

ID_PATTERN = re.compile(r"^[0-9a-f]{24}$")
PAD = PAD_CHUNK.decode("ascii")
# The critical chunks, and the padding chunk (random bytes only) that equalises lengths.
ALLOWED_CHUNKS = {"IHDR", "IDAT", "IEND", PAD}
ORDER_ALPHA = 0.001  # family-wise, Bonferroni-corrected over raters
CHANCE_ALPHA = 0.001  # an order matching by chance more often than this is a warning, not a leak


@dataclass
class AuditReport:
    """Findings of an audit: `leaks` fail it, `notes` and `warnings` inform."""

    study: str
    leaks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.leaks

    def lines(self) -> list[str]:
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.leaks)} leaks)"
        return (
            [f"audit of study {self.study!r}: {verdict}"]
            + [f"LEAK: {text}" for text in self.leaks]
            + [f"warning: {text}" for text in self.warnings]
            + self.notes
        )


def audit_study(db_path: str | Path, study: str) -> AuditReport:
    """Audit a study's blinding; see the module docstring for what is checked."""
    report = AuditReport(study)
    with connect(db_path) as db:
        study_record = store.find_study(db, study)
        items = store.study_items(db, study_record.id)
        orders = stored_orders(db, study_record.id)
        assignments = store.showings(db, study_record.id)
    _audit_images(items, image_store_dir(db_path), report)
    _audit_ids(items, assignments, report)
    _audit_orders(assignments, report)
    _audit_derivable_orders(study_record, items, orders, report)
    _audit_shared_orders(items, study_record.settings, orders, report)
    _audit_byte_lengths(items, image_store_dir(db_path), report)
    return report


def png_layout(data: bytes) -> tuple[list[str], int, int, int, int]:
    """Chunk types, width, height, bit depth and colour type of a PNG (ValueError if not a PNG)."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 33:
        raise ValueError("not a PNG file")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    chunks, offset = [], 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        chunks.append(kind.decode("latin-1"))
        offset += 12 + length
    return chunks, width, height, depth, colour


def _audit_images(items: list[dict], store: Path, report: AuditReport) -> None:
    for item in items:
        path = store / f"{item['id']}.png"
        try:
            data = path.read_bytes()
            chunks, width, height, depth, colour = png_layout(data)
        except (OSError, ValueError) as error:
            report.leaks.append(f"{path}: unreadable ({error})")
            continue
        if (width, height) != (PAPER_SIZE, PAPER_SIZE):
            report.leaks.append(f"{path}: {width}x{height} px, every tile must be {PAPER_SIZE}x{PAPER_SIZE}")
        if (depth, colour) != (8, 2):
            report.leaks.append(f"{path}: bit depth {depth}, colour type {colour} (expected 8-bit RGB)")
        extra = sorted(set(chunks) - ALLOWED_CHUNKS)
        if extra:
            report.leaks.append(f"{path}: metadata chunks {', '.join(extra)}")
        if chunks.count(PAD) != 1 or chunks[-2:] != [PAD, "IEND"]:
            report.leaks.append(f"{path}: not padded (one {PAD} chunk right before IEND)")
        if hashlib.sha256(data).hexdigest() != item["png_sha256"]:
            report.leaks.append(f"{path}: bytes differ from those recorded at creation")
    report.notes.append(f"images: {len(items)} PNGs checked (format, size, mode, chunks, padding, sha256)")


def _audit_ids(items: list[dict], assignments: list[dict], report: AuditReport) -> None:
    """Item ids and showing tokens must be the random 24-hex-digit strings histosynth draws:
    no room for provenance, and a repeat's URL differs from its first showing's."""
    for item in items:
        if not ID_PATTERN.match(item["id"]):
            report.leaks.append(f"item id {item['id']!r} is not an opaque random id")
    for entry in assignments:
        if not ID_PATTERN.match(entry["token"]):
            report.leaks.append(f"showing token {entry['token']!r} of {entry['rater']} is not opaque")
    report.notes.append(
        "names: stored files are <item id>.png; browsers see only per-showing tokens (tiles/<token>.png)"
    )


def _audit_orders(assignments: list[dict], report: AuditReport) -> None:
    by_rater: dict[str, list[dict]] = {}
    for entry in assignments:
        if not entry["repeat"]:
            by_rater.setdefault(entry["rater"], []).append(entry)
    if not by_rater:
        report.notes.append("order: no raters yet")
        return
    alpha = ORDER_ALPHA / len(by_rater)
    for rater, entries in by_rater.items():
        statistic, p_value = _order_association(entries)
        report.notes.append(f"order: {rater}: Kruskal-Wallis H = {statistic:.3f}, p = {p_value:.4f}")
        if p_value < alpha:
            association = f"H = {statistic:.2f}, p = {p_value:.2g}"
            report.leaks.append(f"order of rater {rater!r} is associated with the source ({association})")


def _order_association(entries: list[dict]) -> tuple[float, float]:
    """Kruskal-Wallis H of within-class-block ranks grouped by source.

    Ranking within each class removes the (intended) class blocks, so only a source pattern
    inside a block - the thing a rater could exploit - moves the statistic.
    """
    relative: dict[str, list[float]] = {}
    for class_name in {e["class"] for e in entries}:
        block = [e for e in entries if e["class"] == class_name]
        ranks = stats.rankdata([e["position"] for e in block]) / len(block)
        for entry, rank in zip(block, ranks, strict=True):
            relative.setdefault(entry["source"], []).append(float(rank))
    groups = [np.array(values) for values in relative.values()]
    if len(groups) < 2 or np.ptp(np.concatenate(groups)) == 0:
        return 0.0, 1.0
    result = stats.kruskal(*groups)
    return float(result.statistic), float(result.pvalue)


def _audit_derivable_orders(
    study: Study, items: list[dict], orders: dict[str, list], report: AuditReport
) -> None:
    """A stored order that a seeded scheme reproduces from public values is no secret.

    In a study with few possible orders a secret order can equal a derivable one by chance;
    then it is reported as a warning (a rater could guess the order about as well), not a leak.
    """
    known = [
        KnownItem(item["id"], item["source"], item["class"], item["original_path"], item["rowid"])
        for item in items
    ]
    tried, matches = 0, []
    for index, (rater, order) in enumerate(orders.items()):
        stored = tuple(entry.item_id for entry in order if not entry.repeat)
        for candidate in derivable_orders(
            known,
            seed=study.seed,
            classes=study.classes,
            block_by_class=study.settings.block_by_class,
            rater=rater,
            index=index,
        ):
            tried += 1
            if candidate.permutation == stored:
                matches.append(
                    f"order of rater {rater!r} is derivable from the study TOML ({candidate.scheme})"
                )
                break
    possible = _log10_possible_orders(items, study.settings.block_by_class)
    _report_unless_chance(matches, math.log10(max(tried, 1)) - possible, report)
    report.notes.append(f"secret orders: {tried} orders derivable from TOML, seed and names tried")


def _audit_shared_orders(
    items: list[dict], settings: StudySettings, orders: dict[str, list], report: AuditReport
) -> None:
    """Two raters with one permutation: one can tell the other the answers, position by position."""
    first_rater: dict[tuple[str, ...], str] = {}
    shared = []
    for rater, order in orders.items():
        permutation = tuple(entry.item_id for entry in order if not entry.repeat)
        if permutation in first_rater:
            shared.append(f"raters {first_rater[permutation]!r} and {rater!r} have the same order")
        first_rater.setdefault(permutation, rater)
    pairs = len(orders) * (len(orders) - 1) / 2
    _report_unless_chance(
        shared, math.log10(max(pairs, 1)) - _log10_possible_orders(items, settings.block_by_class), report
    )


def _log10_possible_orders(items: list[dict], block_by_class: bool) -> float:
    """log10 of how many orders of first showings the study's design allows."""
    sizes: dict[str, int] = {}
    for item in items:
        key = item["class"] if block_by_class else ""
        sizes[key] = sizes.get(key, 0) + 1
    return sum(math.lgamma(size + 1) for size in sizes.values()) / math.log(10)


def _report_unless_chance(findings: list[str], log10_chance: float, report: AuditReport) -> None:
    """Findings are leaks, unless they are likely by chance alone (too few possible orders)."""
    if log10_chance < math.log10(CHANCE_ALPHA):
        report.leaks.extend(findings)
        return
    chance = min(1.0, 10**log10_chance)
    note = f" (the study allows so few orders that this happens by chance: p ~ {chance:.2g})"
    report.warnings.extend(finding + note for finding in findings)


def _audit_byte_lengths(items: list[dict], store: Path, report: AuditReport) -> None:
    """Every tile must have one length: Content-Length is visible to any rater."""
    lengths: dict[tuple[str, str], list[int]] = {}
    for item in items:
        path = store / f"{item['id']}.png"
        if path.is_file():
            lengths.setdefault((item["class"], item["source"]), []).append(path.stat().st_size)
    distinct = {length for values in lengths.values() for length in values}
    if len(distinct) > 1:
        ranges = ", ".join(
            f"{class_name}/{source} {min(values)}-{max(values)}"
            for (class_name, source), values in sorted(lengths.items())
        )
        report.leaks.append(f"PNG byte lengths differ (visible as Content-Length): {ranges} bytes")
    elif distinct:
        report.notes.append(f"lengths: every tile is {distinct.pop()} bytes, in every class and source")
