"""`study audit`: check what a rater could learn about a tile's source, and fail loudly.

A blinded study is only as good as its weakest side channel. The audit re-reads every stored
PNG (format, pixel size, colour mode, chunks, hash), checks that ids and file names carry no
provenance, and tests whether any rater's order is associated with the source (Kruskal-Wallis
on positions within each class block). PNG byte sizes are reported per source as a warning:
they are visible through Content-Length and differ when generators make smoother images.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from histosynth.images import PAPER_SIZE
from rater_app.store import connect, image_store_dir, study_row

ID_PATTERN = re.compile(r"^[0-9a-f]{24}$")
ALLOWED_CHUNKS = {"IHDR", "IDAT", "IEND"}
ORDER_ALPHA = 0.001  # family-wise, Bonferroni-corrected over raters


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
        row = study_row(db, study)
        items = [dict(r) for r in db.query("SELECT * FROM items WHERE study_id = ?", [row["id"]])]
        assignments = [
            dict(r)
            for r in db.query(
                """SELECT r.name AS rater, a.position, a.repeat, a.token, i.source, i.class FROM assignments a
                   JOIN raters r ON r.id = a.rater_id JOIN items i ON i.id = a.item_id
                   WHERE r.study_id = ? ORDER BY r.id, a.position""",
                [row["id"]],
            )
        ]
    _audit_images(items, image_store_dir(db_path), report)
    _audit_ids(items, assignments, report)
    _audit_orders(assignments, report)
    _report_byte_sizes(items, image_store_dir(db_path), report)
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
        if hashlib.sha256(data).hexdigest() != item["png_sha256"]:
            report.leaks.append(f"{path}: bytes differ from those recorded at creation")
    report.notes.append(f"images: {len(items)} PNGs checked (format, size, mode, chunks, sha256)")


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


def _report_byte_sizes(items: list[dict], store: Path, report: AuditReport) -> None:
    sizes: dict[str, list[int]] = {}
    for item in items:
        path = store / f"{item['id']}.png"
        if path.is_file():
            sizes.setdefault(item["source"], []).append(path.stat().st_size)
    if len(sizes) < 2:
        return
    summary = ", ".join(f"{source} {np.mean(values) / 1024:.1f} KiB" for source, values in sizes.items())
    p_value = float(stats.kruskal(*[np.array(v) for v in sizes.values()]).pvalue)
    text = f"PNG bytes per source (visible as Content-Length): {summary}; Kruskal-Wallis p = {p_value:.3g}"
    (report.warnings if p_value < 0.01 else report.notes).append(text)
