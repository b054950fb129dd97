"""Analysts' labels put to use: exported as labelled data (``riskwire models eval`` and ``models
train`` read it as they read the shared sets), and the live models measured against them.

The labels are the one judgement of the models drawn from the feeds a deployment actually reads:
the held-out public sets say how a model does on FPB and on the tweets, these say how the fused
score in production does on this desk's news, model version by model version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from riskwire.records import LABELS
from storage import labels as store
from storage.labels import LabelError, LabelSelection, Resolution
from streams.pipeline.normalise import model_text


@dataclass(frozen=True)
class ExportReport:
    rows: int
    tied: int  # documents whose labellers are tied: not exported
    disputed: int  # exported documents whose labellers did not all agree
    by_label: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "tied": self.tied, "disputed": self.disputed,
                "by_label": self.by_label}  # fmt: skip


def export_rows(
    session: Session, selection: LabelSelection
) -> tuple[list[dict[str, Any]], Resolution]:
    """One row per labelled document with a resolved label, in event-time order: ``text`` (what
    the models read: title and text), ``label``, and where it came from."""
    resolution = store.resolved(session, selection)
    rows = [
        {
            "text": model_text(d.title, d.text), "label": resolution.labels[d.id],
            "document_id": d.id, "kind": d.kind, "lang": d.lang, "source": d.source,
            "published_at": d.published_at.isoformat(), "labellers": resolution.labellers[d.id],
        }
        for d in store.documents(session, sorted(resolution.labels))
    ]  # fmt: skip
    return rows, resolution


def export(
    sessions: sessionmaker[Session], selection: LabelSelection, out: IO[str]
) -> ExportReport:
    """Write the selected labels as JSONL (``text`` and ``label``, as ``models eval --data``
    reads): one line per document."""
    with sessions() as session:
        rows, resolution = export_rows(session, selection)
    by_label = dict.fromkeys(LABELS, 0)
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        by_label[row["label"]] += 1
    return ExportReport(len(rows), len(resolution.tied), resolution.disputed, by_label)


@dataclass(frozen=True)
class Agreement:
    """How one model version's live scores compare with the analysts' labels."""

    model_version: str
    n: int
    accuracy: float
    macro_f1: float
    weighted_f1: float
    ece: float
    confusion: list[list[int]]  # [analysts' label][model's label], in LABELS order

    def as_dict(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "n": self.n, "accuracy": self.accuracy,
                "macro_f1": self.macro_f1, "weighted_f1": self.weighted_f1, "ece": self.ece,
                "confusion": self.confusion}  # fmt: skip


def agreement(
    session: Session, selection: LabelSelection, run_id: str = "live"
) -> tuple[list[Agreement], Resolution]:
    """Per model version that scored labelled documents in the run (the live stream's by default;
    a replay's to judge a candidate model; most documents first): accuracy, macro- and
    weighted-F1, expected calibration error and the confusion matrix of its fused labels against
    the analysts' resolved labels."""
    from models.training import confusion, evaluate

    resolution = store.resolved(session, selection)
    per_version: dict[str, tuple[list[tuple[float, float, float]], list[int]]] = {}
    for s in store.scores_of(session, sorted(resolution.labels), run_id):
        probs, truth = per_version.setdefault(s.model_version, ([], []))
        probs.append((s.p_negative, s.p_neutral, s.p_positive))
        truth.append(LABELS.index(resolution.labels[s.document_id]))
    out = []
    for version, (probs, truth) in per_version.items():
        p, y = np.asarray(probs, dtype=np.float64), np.asarray(truth, dtype=np.int64)
        m = evaluate(p, y)
        out.append(
            Agreement(
                version,
                len(y),
                m["accuracy"],
                m["macro_f1"],
                m["weighted_f1"],
                m["ece"],
                confusion(p, y).tolist(),
            )
        )
    out.sort(key=lambda a: (-a.n, a.model_version))
    return out, resolution


@contextmanager
def open_out(path: Path | None) -> Iterator[IO[str]]:
    """Where an export goes: a file, or standard output."""
    import sys

    if path is None:
        yield sys.stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        yield handle


@dataclass
class ImportReport:
    stored: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (where, why)

    def as_dict(self) -> dict[str, Any]:
        return {"stored": self.stored,
                "refused": [{"where": w, "reason": r} for w, r in self.refused]}  # fmt: skip


def read_label_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | str]]:
    """(where, row) from a JSONL or CSV file of labels; a line that is not an object comes as
    (where, why) instead, so one bad line is reported and the rest still count."""
    import csv
    import io

    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":  # newline="": line breaks inside quoted fields stay
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for row in reader:
            yield f"{path.name}:{reader.line_num}", dict(row)
        return
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield where, f"not valid JSON: {exc.msg}"
            continue
        yield where, row if isinstance(row, dict) else "not a JSON object"


def import_labels(
    sessions: sessionmaker[Session],
    rows: Iterable[tuple[str, dict[str, Any] | str]],
    labeller: str,
    at: datetime,
    batch: int = 500,
) -> ImportReport:
    """Store labels given in bulk (``document_id``, ``label``, optional ``labeller`` and ``note``;
    ``labeller`` defaults to the importer), each as ``labels add`` would: idempotent, so a file
    imported twice stores nothing twice. A row that cannot be a label is refused with its reason
    and the others are stored."""
    report = ImportReport()
    refused: list[tuple[int, str, str]] = []  # (row number, where, why): reported in file order
    pending: list[tuple[int, str, dict[str, Any]]] = []

    def flush() -> None:
        with sessions.begin() as session:
            for n, where, row in pending:
                note = row.get("note")
                try:  # put checks everything before it writes: a refusal leaves nothing behind
                    store.put(session, str(row.get("document_id") or ""),
                              str(row.get("labeller") or labeller), str(row.get("label")),
                              at, str(note) if note else None)  # fmt: skip
                    report.stored += 1
                except LabelError as exc:
                    refused.append((n, where, str(exc)))
        pending.clear()

    for n, (where, row) in enumerate(rows):
        if isinstance(row, str):
            refused.append((n, where, row))
            continue
        pending.append((n, where, row))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    report.refused = [(where, why) for _, where, why in sorted(refused)]
    return report
