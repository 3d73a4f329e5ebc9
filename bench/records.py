"""Result records: one JSON schema for every number the harness produces, one typed model per kind.

A record holds what was measured (metrics, timings), what produced it (dataset, models with
revisions, every setting) and where (git sha, package versions, device, UTC date), so a number
never travels without its context. Tables and plots are made from records only.

Each kind (quality, throughput, fidelity, comparison, reproduce) is a pydantic model over the shared
`Record` base. The fields readers use are typed; descriptions that differ by engine or collection
stay free-form dicts. A record is written back with exactly the keys it was read or built with, in
their order (`Part`), so schema-1 files written before these models load and write back unchanged.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer, model_validator

from . import lazy
from .config import format_validation_error
from .errors import BenchError
from .io import atomic_write_json


SCHEMA = "rerank-bench/record"
SCHEMA_VERSION = 1

#: Packages whose versions go into every record.
TRACKED_PACKAGES = (
    "rerank-bench", "torch", "transformers", "sentence-transformers", "tokenizers", "ir-datasets",
    "ranx", "numpy", "pandas", "bm25s", "pytrec-eval-terrier",
)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_sha(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """The commit of the project checkout and whether it had uncommitted changes."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5)
        return {"sha": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}


def package_versions(names=TRACKED_PACKAGES) -> dict[str, str | None]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict[str, Any]:
    """What ran the numbers: the CUDA device(s) if torch sees any, else the CPU."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if "torch" in sys.modules or _importable("torch"):
        torch = lazy.torch
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["device"] = info["gpus"][0]
        else:
            info["device"] = "cpu"
    return info


def _importable(name: str) -> bool:
    return find_spec(name) is not None


def environment() -> dict[str, Any]:
    return {
        "git": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device_info(),
        "created_utc": utc_now(),
    }


# -- the parts a record is made of ---------------------------------------------------------------
class Part(BaseModel):
    """A piece of a record. Keys it does not declare are kept, and it is written with exactly the
    keys it was given, in their order: a declared field left out stays out of the JSON (its default
    only serves readers), so reading and writing a record changes nothing in the file."""

    # ser_json_inf_nan: a JSON-mode dump (bench.io's fallback for models) keeps NaN, as json.dumps writes it.
    model_config = ConfigDict(extra="allow", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True, ser_json_inf_nan="constants")
    _keys: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_keys(cls, data: Any, handler):
        part = handler(data)
        if isinstance(data, dict):
            part._keys = [cls._written_key(k) for k in data]
        return part

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in type(self).model_fields or name in (self.__pydantic_extra__ or {}):
            key = self._written_key(name)
            if key not in self._keys:
                self._keys.append(key)

    @model_serializer(mode="wrap")
    def _given_keys_in_order(self, handler):
        out = handler(self)
        return {k: out[k] for k in self._keys if k in out}

    def has(self, key: str) -> bool:
        """Whether the record states `key` (a stated null included): for checks that compare only
        what a record says."""
        return self._written_key(key) in self._keys

    @classmethod
    def _written_key(cls, name: str) -> str:
        field = cls.model_fields.get(name)
        return field.alias if field is not None and field.alias else name


class Environment(Part):
    """Where a record was made (`environment()`)."""

    git: dict[str, Any]
    python: str
    platform: str
    packages: dict[str, str | None]
    device: dict[str, Any]
    created_utc: str


class Record(Part):
    """What every record holds; `path` is the file it was read from or written to (not in the JSON)."""

    schema_name: Literal["rerank-bench/record"] = Field(alias="schema")
    schema_version: Literal[1]
    kind: str
    environment: Environment
    _path: Path | None = PrivateAttr(None)

    @property
    def path(self) -> Path | None:
        return self._path

    @path.setter
    def path(self, value: str | os.PathLike | None) -> None:
        self._path = None if value is None else Path(value)

    @classmethod
    def from_disk(cls, path: str | os.PathLike) -> Self:
        """The record in `path`, as its kind's model; a BenchError when it is not of this class's kind."""
        rec = read_record(path)
        if not isinstance(rec, cls):
            raise BenchError(f"{path}: a {rec.kind!r} record, not a {cls.__name__}")
        return rec

    def to_disk(self, path: str | os.PathLike) -> Path:
        """Write atomically; the record then knows `path`."""
        self.path = atomic_write_json(path, self.model_dump())
        return self.path




# -- quality: one system on one dataset ------------------------------------------------------------
class Dataset(Part):
    """The collection a quality record measured: its label, then `Collection.describe()`."""

    label: str
    name: str | None = None
    id: str | None = None
    split: str | None = None
    language: str | None = None
    n_queries: int | None = None
    n_docs: int | None = None
    max_queries: int | None = None
    fingerprint: str | None = None
    judged_docs_missing: int | None = None
    empty_queries: int | None = None
    empty_docs: int | None = None


class System(Part):
    """A first stage (`stage` first_stage) or a reranker over one (`stage` rerank). The components'
    descriptions (`first_stage`, `reranker`) differ by kind and engine and stay free-form."""

    label: str
    stage: Literal["first_stage", "rerank"] | None = None
    first_stage: dict[str, Any] = {}
    first_stage_label: str | None = None
    reranker: dict[str, Any] | None = None

    @property
    def untrained(self) -> bool:
        """Whether the system's model has random weights: the reranker's, else the first stage's (a
        fusion's: any of its members')."""
        return _untrained(self.reranker) or _untrained(self.first_stage)


def _untrained(part) -> bool:
    if not isinstance(part, dict):
        return False
    if isinstance(part.get("model"), dict) and part["model"].get("untrained"):
        return True
    return any(_untrained(member) for member in part.get("members") or [])


class StatedConventions(Part):
    """The trec_eval conventions a record was evaluated under (`evaluate.Conventions.describe()`);
    None: the record does not state it."""

    trec_eval_flags: str | None = None
    depth: int | None = None
    rel_level: int | None = None
    judged_only: bool | None = None
    ties: str | None = None


class EvaluationSettings(Part):
    metrics: list[str] = []
    conventions: StatedConventions = Field(default_factory=StatedConventions)


class QualityTimings(Part):
    """First stages fill the first group, rerankers the second.

    A reranker's rate: ``rerank_pairs_per_s`` = pairs / ``rerank_scoring_seconds``, the scoring calls
    only, after an untimed warm-up (``rerank_timed`` says so in words, ``rerank_speed_source`` whether
    this run or an earlier one's checkpoints timed them, ``rerank_block_pairs_per_s`` the spread over
    the blocks). Records without ``rerank_timed`` were written before that: their rate includes the
    first call's warm-up (`speed`)."""

    first_stage_seconds: float | None = None
    cached: bool | None = None
    encode_seconds: float | None = None
    search_seconds: float | None = None
    docs_per_second: float | None = None
    rerank_seconds: float | None = None     # the whole step: building or loading the model, reading, scoring
    rerank_scoring_seconds: float | None = None
    rerank_pairs_per_s: float | None = None
    rerank_timed: str | None = None
    rerank_speed_source: str | None = None
    rerank_block_pairs_per_s: list[float] | None = None
    rerank_warmup_pairs: int | None = None
    resumed_blocks: int | None = None
    blocks: int | None = None
    backend: str | None = None              # where the expensive steps ran: local or ray (info.execution: the cluster)

    def speed(self) -> tuple[float | None, str]:
        """A reranked system's pairs/s and what it times, in words (for tables, the results page)."""
        if self.rerank_pairs_per_s is None:
            return None, "no rate recorded"
        if self.rerank_timed is None:
            return self.rerank_pairs_per_s, ("this run's own timing of its scoring calls, first call's warm-up "
                                             "included (a record written before warm-ups)")
        spread = [r for r in self.rerank_block_pairs_per_s or [] if r]
        shown = (f"; {len(spread)} blocks, {min(spread):,.0f} to {max(spread):,.0f} pairs/s" if len(spread) > 1
                 else "; one block")
        return self.rerank_pairs_per_s, f"{self.rerank_speed_source or 'this run'}{shown}"


class QualityRecord(Record):
    """Metrics of one system on one dataset (`bench run`), with per-query values and the run and
    qrels files they come from (relative to the run folder that holds `records/`)."""

    kind: Literal["quality"]
    key: str | None = None
    experiment: dict[str, Any] = {}
    dataset: Dataset
    system: System
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]] = {}
    diagnostics: dict[str, float | int | None | dict[str, float | int]] = {}  # counters: a family's own, summed
    run_file: str | None = None
    qrels_file: str | None = None
    timings: QualityTimings = Field(default_factory=QualityTimings)
    info: dict[str, Any] = {}


# -- throughput: engines side by side on the same pairs --------------------------------------------
class ModelInfo(Part):
    """`models.describe()`: the reference, revision and whether the weights are random."""

    ref: str
    revision: str | None = None
    untrained: bool = False
    source: str | None = None
    shape: dict[str, Any] | None = None


class PairsSummary(Part):
    """`PairSet.describe()` with the token counts per max_length."""

    collection: str | None = None
    language: str | None = None
    candidates: str | None = None
    n_pairs: int
    n_queries: int
    k: int
    mean_chars_per_pair: float | None = None
    mean_tokens_per_pair: dict[str, float] = {}
    truncated_share: dict[str, float] = {}


class ThroughputSettings(Part):
    warmup: int
    repeats: int
    latency_queries: int
    query_max_length: int | None = None
    interleave: bool = False


class MatmulCeiling(Part):
    """The device's measured matrix rate (`throughput.matmul_ceiling`)."""

    device: str | None = None
    dtype: str | None = None
    n: int | None = None
    repeats: int | None = None
    median_s: float | None = None
    tflop_per_s: float | None = None
    method: str | None = None


class CellResult(Part):
    """One cell of a sweep: its knobs, then what it measured; a failed cell has `error` and no measures."""

    engine: str
    dtype: str
    max_length: int
    batch_size: int | None = None
    token_budget: int | None = None
    options: dict[str, Any] = {}
    max_pairs: int | None = None
    note: str = ""
    label: str
    variant: str
    engine_describe: dict[str, Any] = {}
    n_pairs: int | None = None
    n_queries: int | None = None
    k: int | None = None
    warmup: int | None = None
    repeats: int | None = None
    seconds: list[float] = []
    median_s: float | None = None
    pairs_per_s: float | None = None
    queries_per_s: float | None = None
    latency_ms: dict[str, Any] = {}
    peak_memory: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    padding_fraction: float | None = None
    mean_tokens_per_pair: float | None = None
    error: str | None = None
    dtype_resolved: str | None = None
    devices: int | None = None
    useful_flop: int | None = None
    useful_tflop_per_s: float | None = None
    ceiling_share: float | None = None
    flop_tokens: int | None = None
    flop_tokens_note: str | None = None
    speedup_vs_plain: float | None = None
    speedup_reference: str | None = None


class ThroughputRecord(Record):
    kind: Literal["throughput"]
    name: str
    model: ModelInfo
    device: str
    pairs: PairsSummary
    settings: ThroughputSettings
    ceiling: MatmulCeiling
    cells: list[CellResult]


# -- fidelity: lower precisions against fp32 -------------------------------------------------------
class FidelityComparison(Part):
    """`fidelity.compare()` of one cell against its reference, with the cell's names."""

    cell: str
    reference: str
    engine: str | None = None
    variant: str | None = None
    dtype: str | None = None
    pairs_set: str | None = None
    n_pairs: int
    n_queries: int
    max_abs_diff: float
    mean_abs_diff: float
    reference_score_std: float | None = None
    max_abs_diff_over_std: float | None = None
    kendall_tau: dict[str, Any]
    top10_identical: float | None = None
    top10_identical_queries: int | None = None
    ndcg_at_10: dict[str, Any] | None = Field(None, alias="ndcg@10")


class FidelityRecord(Record):
    kind: Literal["fidelity"]
    comparisons: list[FidelityComparison]
    name: str | None = None
    model: ModelInfo | str | None = None
    device: str | None = None
    pairs: PairsSummary | None = None
    settings: dict[str, Any] = {}
    note: str | None = None


# -- comparison: significance between systems -------------------------------------------------------
class ComparisonSettings(Part):
    """`compare.Settings`."""

    test: str
    alpha: float
    correction: str
    permutations: int
    bootstrap: int
    confidence: float
    seed: int


class ComparisonRecord(Record):
    """`bench compare`: the means and pairwise tests as table rows (free-form: one key per column)."""

    kind: Literal["comparison"]
    inputs: list[str]
    settings: ComparisonSettings
    systems: list[str]
    conventions: str | None = None
    means: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    plots: list[str] = []


# -- reproduce: measured against published ---------------------------------------------------------
class CheckResult(Part):
    """`registry.Check.as_dict()`."""

    name: str
    metric: str
    expected: float
    tolerance: float
    measured: float | None = None
    delta: float | None = None
    status: Literal["OK", "FAIL", "MISSING"]
    reasons: list[str] = []
    records: list[str] = []
    diagnostics: dict[str, float] = {}
    source: dict[str, Any] = {}
    experiment: str


class ReproduceRecord(Record):
    kind: Literal["reproduce"]
    checks: list[CheckResult]


#: The model of each kind.
RECORD_KINDS: dict[str, type[Record]] = {
    "quality": QualityRecord, "throughput": ThroughputRecord, "fidelity": FidelityRecord,
    "comparison": ComparisonRecord, "reproduce": ReproduceRecord,
}


# -- making, reading and finding records -----------------------------------------------------------
def make_record(kind: str, **fields: Any) -> Record:
    """A record of `kind` ("quality", "throughput", "fidelity", "comparison", "reproduce") with the
    environment attached. `fields` are the kind's own content (dataset, system, settings, metrics...)."""
    return _model_of(kind, "make_record").model_validate(
        {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": kind, **fields, "environment": environment()})


def read_record(path: str | os.PathLike) -> Record:
    """The record in `path` as its kind's model; every problem is a BenchError naming the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise BenchError(f"{path}: record file not found") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); delete it and rerun the step that wrote it") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise BenchError(f"{path}: unreadable ({exc}); delete it and rerun the step that wrote it") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
        raise BenchError(f"{path}: not a rerank-bench record (field 'schema' must be {SCHEMA!r})")
    return _validated(path, raw)


def find_records(folder: str | os.PathLike, kind: str | None = None, *, skipped: list[str] | None = None) -> list[Record]:
    """All records below `folder` (recursively), optionally of one kind, sorted by path.

    A .json file that cannot be read (cut short, not UTF-8) or a record that does not validate is a
    BenchError naming it: a silently dropped record would change a table. With a `skipped` list, the
    problem (one message per file) is appended there instead and the file left out."""
    out = []
    for p in sorted(Path(folder).rglob("*.json")):
        try:
            try:
                raw = json.loads(p.read_text(encoding="utf-8-sig"))
            except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
                raise BenchError(f"{p}: unreadable JSON ({exc}); delete it and rerun the step that wrote it "
                                 "(`bench report` and `bench compare` take --skip-bad to leave it out)") from None
            if isinstance(raw, dict) and raw.get("schema") == SCHEMA:
                _check_version(p, raw)
                if kind is None or raw.get("kind") == kind:
                    out.append(_validated(p, raw))
            elif p.parent.name == "records":  # a records/ folder holds records only: nothing there is skipped unsaid
                raise BenchError(f"{p}: valid JSON, but not a rerank-bench record ({_what_json(raw)}; a record has "
                                 f"'schema': {SCHEMA!r}); move it out of records/ or delete it "
                                 "(`bench report` and `bench compare` take --skip-bad to leave it out)")
        except BenchError as exc:
            if skipped is None:
                raise
            skipped.append(str(exc))
    return out


def _what_json(raw: Any) -> str:
    """What a JSON value that is not a record is, in a few words."""
    if raw is None:
        return "null"
    if isinstance(raw, list):
        return f"a list of {len(raw)} item(s)"
    if not isinstance(raw, dict):
        return f"a {type(raw).__name__}"
    if not raw:
        return "an empty object"
    if "schema" in raw:
        return f"'schema' is {raw['schema']!r}"
    return f"an object without 'schema' (keys: {', '.join(list(map(str, raw))[:5])})"


def _check_version(path: Path, raw: dict) -> None:
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise BenchError(f"{path}: record schema_version {raw.get('schema_version')!r}, this version reads {SCHEMA_VERSION}")


def _validated(path: Path, raw: dict) -> Record:
    _check_version(path, raw)
    model = _model_of(raw.get("kind"), str(path))
    try:
        rec = model.model_validate(raw)
    except ValidationError as exc:
        raise BenchError(format_validation_error(exc, f"{path} ({raw['kind']} record)")) from None
    rec.path = path
    return rec


def _model_of(kind: Any, where: str) -> type[Record]:
    if kind not in RECORD_KINDS:
        raise BenchError(f"{where}: record kind {kind!r} unknown; the kinds are {', '.join(RECORD_KINDS)}")
    return RECORD_KINDS[kind]
