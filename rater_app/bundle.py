"""Everything a study has produced, as one ZIP for the admin (`/admin/study.zip`).

The ZIP holds:

- `votes.csv`: the votes, exactly as `histosynth study export` writes them;
- `evaluated/`: the evaluator's tables and figures, from the same subprocess as the interim
  results (`rater_app.interim.evaluate_study`), raters who are not done included;
- `study.toml`: the study definition recreated from the database (pool folders as stored);
- `admin_actions.csv`: the admin's record (who did what, when; every look at interim results),
  ending with this download;
- `manifest.json`: the histosynth version, how the evaluation ran and whether it failed, and the
  sha256 and size of every other file in the ZIP.

It is built in a temporary folder that is removed before the ZIP's bytes are returned, so
nothing stays behind on the server. An evaluation that fails (no votes yet, say) does not
withhold the rest: the manifest says why `evaluated/` is missing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import tomlkit

from histosynth import __version__
from histosynth.files import atomic_write_text
from rater_app import store
from rater_app.interim import (
    DOWNLOAD_ACTION,
    EVALUATED_DIR,
    EVALUATOR_ARGS,
    EVALUATOR_TIMEOUT_S,
    VOTES_FILE,
    EvaluationFailed,
    evaluate_study,
)
from rater_app.raters import ADMIN_NAME
from rater_app.store import AdminAction, Study, connect, transaction

STUDY_FILE = "study.toml"
RECORD_FILE = "admin_actions.csv"
MANIFEST_FILE = "manifest.json"


def build_bundle(db_path: str | Path, study_name: str, timeout: float = EVALUATOR_TIMEOUT_S) -> bytes:
    """The study's ZIP (see the module docstring), its download recorded in the admin's record.

    The download is recorded before the record is written into the ZIP, in one transaction
    with reading it back, so the archived record is complete up to this download.

    Raises:
        StudyError: no such study, or the database cannot be read or written.
    """
    with connect(db_path) as db:
        study = store.find_study(db, study_name)
        n_items = store.item_count(db, study.id)
    with tempfile.TemporaryDirectory(prefix="histosynth-bundle-") as temp:
        # The evaluator works in its own folder: what a failed or killed run leaves there
        # (its staging folder) never reaches the ZIP.
        work, folder = Path(temp) / "work", Path(temp) / "zip"
        work.mkdir()
        folder.mkdir()
        try:
            evaluation = evaluate_study(db_path, study.name, work, timeout)
            os.replace(evaluation.evaluated, folder / EVALUATED_DIR)
            n_votes, error = evaluation.n_votes, None
        except EvaluationFailed as failure:
            n_votes, error = None, str(failure)
        os.replace(work / VOTES_FILE, folder / VOTES_FILE)
        atomic_write_text(folder / STUDY_FILE, study_toml(study, n_items))
        with connect(db_path) as db, transaction(db):
            store.record_admin_action(db, study.id, ADMIN_NAME, DOWNLOAD_ACTION)
            actions = store.admin_actions(db, study.id)
        atomic_write_text(folder / RECORD_FILE, admin_record_csv(actions))
        files = sorted(path for path in folder.rglob("*") if path.is_file())
        manifest = {
            "study": study.name,
            "created_at": _iso(datetime.now(timezone.utc).timestamp()),
            "histosynth_version": __version__,
            "votes": n_votes,
            "evaluation": {
                "command": " ".join(
                    ["histosynth", *EVALUATOR_ARGS, "--votes", VOTES_FILE, "--out", EVALUATED_DIR]
                ),
                "error": error,
            },
            "files": [_file_entry(path, folder) for path in files],
        }
        atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        return _zip(folder, [*files, folder / MANIFEST_FILE])


def study_toml(study: Study, n_items: int) -> str:
    """The study's definition as TOML that `study create` reads back to the same settings.

    Sources are the pool folders as the database stores them (absolute). A study created
    before `images_per_cell` was stored gets it from its item count, which `study create`
    made the same for every class and source.
    """
    settings = study.settings
    per_cell = settings.images_per_cell or n_items // (len(study.classes) * len(study.sources))
    document = tomlkit.document()
    document.add(tomlkit.comment(f"Recreated from the study database for study {study.name!r}."))
    document.add(
        tomlkit.comment("Secrets (the admin's, the raters' and their orders') stay in the database.")
    )
    table = tomlkit.table()
    table.add("name", study.name)
    table.add("seed", study.seed)
    table.add("images_per_cell", per_cell)
    table.add("classes", study.classes)
    table.add("block_by_class", settings.block_by_class)
    table.add("confidence", settings.confidence)
    table.add("allow_changes", settings.allow_changes)
    table.add("repeats", settings.repeats)
    if settings.title is not None:
        table.add("title", settings.title)
    if settings.instructions is not None:
        table.add(
            "instructions", tomlkit.string(settings.instructions, multiline="\n" in settings.instructions)
        )
    document.add("study", table)
    sources = tomlkit.table()
    for name, folder in study.sources.items():
        sources.add(name, folder)
    document.add("sources", sources)
    return tomlkit.dumps(document)


def admin_record_csv(actions: Sequence[AdminAction]) -> str:
    """The admin's record as CSV: at (UTC, ISO 8601), actor, action, target; oldest first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["at", "actor", "action", "target"])
    for action in actions:
        writer.writerow([_iso(action.at), action.actor, action.action, action.target or ""])
    return buffer.getvalue()


def _file_entry(path: Path, folder: Path) -> dict:
    content = path.read_bytes()
    return {
        "path": path.relative_to(folder).as_posix(),
        "sha256": hashlib.sha256(content).hexdigest(),
        "bytes": len(content),
    }


def _zip(folder: Path, files: Sequence[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")
