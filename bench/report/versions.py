"""One experiment version per run folder, and per table.

A version of an experiment is its name and the SHA-256 of its file as `bench run` read it (records:
``experiment.name``, ``experiment.sha256``): drop a reranker, change ``max_queries`` or a comment,
and the next run is another version. Two versions never share a table:

* `bench run` (and `bench reproduce` when it runs an experiment) first sets aside, under
  ``OUT/superseded/<when>-<name>-<digest>/``, the quality records of every other version found in
  ``OUT/records/``, with the run files they name, a copy of their qrels, the report files and a
  NOTE.md that says why (`set_aside`); that folder is a run folder of its own (`bench report` reads it).
* `bench report`, `bench compare` (on folders), the results page and `bench reproduce` read the
  current version only (`latest_version`, `current_records`): the newest version among the records
  outside ``superseded/``, and say what they left out; ``--all-versions`` shows every version, each
  system's name saying its version.

Records that state no digest (an experiment run from Python without its file) form one version per
experiment name.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..io import atomic_write_text, slug
from ..records import QualityRecord, find_records, utc_now

#: The folder, inside a run folder, that holds the records of versions a later run replaced.
SUPERSEDED = "superseded"
#: The files at the top of a run folder that `bench run` writes from one version's records.
REPORT_FILES = ("report.md", "report.csv", "report.html")


@dataclass(frozen=True)
class Version:
    """An experiment version: its name and its file's SHA-256 (None: the records do not state it)."""

    name: str
    digest: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.digest[:12]}" if self.digest else self.name

    def short(self) -> str:
        """The digest's first 12 hex digits, or a word that says there is none."""
        return self.digest[:12] if self.digest else "no file digest"


def version_of(rec: QualityRecord) -> Version:
    exp = rec.experiment or {}
    return Version(str(exp.get("name") or "(unnamed)"), exp.get("sha256"))


def written(rec: QualityRecord) -> tuple:
    """When a record was written: created_utc has whole seconds, the file's mtime breaks ties."""
    return rec.environment.created_utc, rec.path.stat().st_mtime_ns if rec.path and rec.path.exists() else 0


def set_aside_under(rec: QualityRecord, base: Path | None) -> bool:
    """Whether `rec` lies in a superseded/ folder below `base` (a folder given on the command line)."""
    if rec.path is None:
        return False
    path = rec.path.resolve()
    parts = path.relative_to(base.resolve()).parts if base is not None and path.is_relative_to(base.resolve()) else path.parts
    return SUPERSEDED in parts[:-1]


def latest_version(records: list[QualityRecord], base: str | Path | None = None
                   ) -> tuple[list[QualityRecord], list[QualityRecord]]:
    """(records of the current version, the others): the current version is the one that wrote the
    newest record outside superseded/ (below `base`), or, when every record was set aside, the newest."""
    if not records:
        return [], []
    base = Path(base) if base is not None else None
    live = [r for r in records if not set_aside_under(r, base)] or records
    current = version_of(max(live, key=written))
    shown = [r for r in live if version_of(r) == current]
    return shown, [r for r in records if not any(r is s for s in shown)]


def versions_in(records: list[QualityRecord]) -> list[Version]:
    """The versions `records` hold, newest first."""
    newest: dict[Version, tuple] = {}
    for rec in records:
        v = version_of(rec)
        newest[v] = max(newest.get(v, ("", 0)), written(rec))
    return sorted(newest, key=newest.get, reverse=True)


def version_tags(records: list[QualityRecord]) -> dict[Version, str]:
    """What each version is called beside a system's name when several share a table: the experiment
    name, with the digest's first 8 digits when one name has several versions."""
    versions = versions_in(records)
    names = [v.name for v in versions]
    return {v: v.name if names.count(v.name) == 1 else f"{v.name}@{(v.digest or 'none')[:8]}" for v in versions}


def left_out_line(others: list[QualityRecord], shown_version: Version | None = None) -> str:
    """One clause naming the records a table left out, by version, and where they lie."""
    parts = []
    for v in versions_in(others):
        recs = [r for r in others if version_of(r) == v]
        where = " (set aside in superseded/)" if all(set_aside_under(r, None) for r in recs) else ""
        what = (f"an earlier version of {v.name} ({v.short()})" if shown_version and v.name == shown_version.name
                else f"experiment {v.name} ({v.short()})")
        parts.append(f"{len(recs)} record{'s' if len(recs) != 1 else ''} of {what}{where}")
    return "; ".join(parts)


def current_records(records: list[QualityRecord], base: str | Path | None = None) -> list[QualityRecord]:
    """For a pool of records from many run folders (`bench reproduce`): none from a superseded/ folder
    below `base`, and of each experiment in each run folder its newest version only."""
    base = Path(base) if base is not None else None
    live = [r for r in records if not set_aside_under(r, base)]
    groups: dict[tuple, list[QualityRecord]] = {}
    for rec in live:
        folder = rec.path.resolve().parent.parent if rec.path else None
        groups.setdefault((folder, version_of(rec).name), []).append(rec)
    out = []
    for recs in groups.values():
        newest = version_of(max(recs, key=written))
        out += [r for r in recs if version_of(r) == newest]
    return out


def set_aside(out: str | Path, current: Version, log=None) -> list[Path]:
    """Move the quality records of every version but `current` out of `out`/records into
    `out`/superseded/<when>-<name>-<digest>/ (with their run files, a copy of their qrels, the report
    files of the folder and a NOTE.md), before a run of `current` writes there. Returns the folders made."""
    out = Path(out)
    if not (out / "records").is_dir():
        return []
    skipped: list[str] = []  # an unreadable file stays where it is; reading the folder names it
    records = [r for r in find_records(out / "records", kind="quality", skipped=skipped)
               if r.path.parent == out / "records" and version_of(r) != current]
    made = []
    for version in versions_in(records):
        recs = [r for r in records if version_of(r) == version]
        stamp = max(r.environment.created_utc for r in recs).replace("-", "").replace(":", "")
        dest = _new_folder(out / SUPERSEDED / f"{stamp}-{slug(version.name)}-{(version.digest or 'no-digest')[:12]}")
        for rec in recs:
            if rec.run_file and (out / rec.run_file).is_file():
                _move(out / rec.run_file, dest / rec.run_file)
            if rec.qrels_file and (out / rec.qrels_file).is_file() and not (dest / rec.qrels_file).exists():
                (dest / rec.qrels_file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(out / rec.qrels_file, dest / rec.qrels_file)
            _move(rec.path, dest / "records" / rec.path.name)
        for name in REPORT_FILES:  # written from the records of a version that is no longer the folder's
            if (out / name).is_file():
                _move(out / name, dest / name)
        atomic_write_text(dest / "NOTE.md", _note(version, current, recs, out, dest))
        made.append(dest)
        if log:
            log(f"note: {out} held {len(recs)} record(s) of {_what(version, current)}; a run folder holds one "
                f"experiment version, so they were moved to {dest} (see its NOTE.md; `bench report {dest}` shows them)")
    return made


def _what(version: Version, current: Version) -> str:
    if version.name == current.name:
        return f"another version of experiment {version.name} (file digest {version.short()}, now {current.short()})"
    return f"experiment {version.name} (file digest {version.short()})"


def _note(version: Version, current: Version, recs: list[QualityRecord], out: Path, dest: Path) -> str:
    files = sorted({str(r.experiment.get("file")) for r in recs if r.experiment.get("file")})
    return (f"# Set aside: {version}\n\n"
            f"`bench run` moved these {len(recs)} quality record(s) of {_what(version, current)} here on "
            f"{utc_now()}, before it ran {current} into {out}: a run folder holds one experiment version, so "
            "that no table shows two versions as one.\n\n"
            f"- experiment file: {', '.join(files) or 'not stated'}\n"
            f"- written: {min(r.environment.created_utc for r in recs)} to {max(r.environment.created_utc for r in recs)}\n"
            f"- systems: {', '.join(dict.fromkeys(r.system.label for r in recs))}\n"
            f"- datasets: {', '.join(dict.fromkeys(r.dataset.label for r in recs))}\n\n"
            f"This folder is a run folder of its own: `bench report {dest}` prints its table, "
            f"`bench compare {dest / 'records'}` compares its systems.\n")


def _new_folder(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


def _move(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    src.replace(dst)
