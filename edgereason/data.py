"""Problem datasets: GSM8K, MATH-style, AIME/AMC, user files and Hugging Face datasets.

Every loader yields `Problem`s. A bad file raises `DataError` naming the file, line and field.
Test splits are for evaluation only: `train` refuses benchmark test files (see `is_test_split`).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgereason.arithmetic import arithmetic_dev, arithmetic_test, arithmetic_train, with_answer_forms
from edgereason.logic import logic_dev, logic_test, logic_train
from edgereason.paths import cache_dir, data_dir
from edgereason.problems import LETTERS, Problem


class DataError(ValueError):
    """A data file that cannot be read as problems; the message names file, line and field."""

    def __init__(self, path: str | Path, message: str, line: int | None = None, field_name: str | None = None):
        where = f"{path}" + (f", line {line}" if line is not None else "")
        what = f" (field {field_name!r})" if field_name else ""
        super().__init__(f"{where}{what}: {message}")
        self.path, self.line, self.field = str(path), line, field_name


# ---- benchmarks ----------------------------------------------------------------------------

#: name -> (relative file, reader)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "gsm8k": ("gsm8k/test.jsonl", "gsm8k"),
    "gsm8k-train": ("gsm8k/train.jsonl", "gsm8k"),
    "math500": ("math500/test.jsonl", "math"),
    "aime24": ("aime24/test.jsonl", "competition"),
    "amc23": ("amc23/test.jsonl", "competition"),
    "arc-easy": ("arc/easy-test.jsonl", "table"),
    "arc-challenge": ("arc/challenge-test.jsonl", "table"),
}


# Benchmarks made by a seeded generator, not read from files: name -> (split, factory). Only a
# "train" split may be trained on; "dev" is held out for checkpoint selection.
GENERATED: dict[str, tuple[str, Callable[[], list[Problem]]]] = {
    "logic": ("test", logic_test),
    "logic-train": ("train", logic_train),
    "logic-dev": ("dev", logic_dev),
    "arith": ("test", arithmetic_test),
    "arith-train": ("train", arithmetic_train),
    "arith-train-forms": ("train", lambda: with_answer_forms(arithmetic_train())),
    "arith-dev": ("dev", arithmetic_dev),
}


def is_test_split(path: str | Path) -> bool:
    """True for evaluation files (never to be trained on): "test" as a part of the file name
    (test.jsonl, easy-test.jsonl, gsm8k_test.parquet)."""
    return re.search(r"(?:^|[-_.])test(?:[-_.]|$)", Path(path).name) is not None


def is_eval_only(name_or_path: str | Path, root: str | Path | None = None) -> bool:
    """True for a benchmark or file that is for evaluation only (training refuses it)."""
    name = str(name_or_path)
    if name in GENERATED:
        return GENERATED[name][0] != "train"
    return is_test_split(benchmark_path(name, root) if name in BENCHMARKS else Path(name))


def is_test_set(name_or_path: str | Path, root: str | Path | None = None) -> bool:
    """True for a test set: nothing may be chosen on it (a dev split may, and is still never trained on)."""
    name = str(name_or_path)
    if name in GENERATED:
        return GENERATED[name][0] == "test"
    return is_test_split(BENCHMARKS[name][0] if name in BENCHMARKS else Path(name))


def benchmark_path(name: str, root: str | Path | None = None) -> Path:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} (or give a file path)")
    base = Path(root) if root else data_dir()
    path = base / BENCHMARKS[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"benchmark {name!r} expects {path}; set EDGEREASON_DATA_DIR or --data-dir")
    return path


def load_benchmark(name_or_path: str | Path, root: str | Path | None = None, **mapping: str) -> list[Problem]:
    """Load a named benchmark (see BENCHMARKS) or any supported file (reader picked from content)."""
    name = str(name_or_path)
    if name in GENERATED:
        return GENERATED[name][1]()
    if name in BENCHMARKS:
        path = benchmark_path(name, root)
        reader = BENCHMARKS[name][1]
        source = name
    elif Path(name).is_file():
        path, reader, source = Path(name), "auto", Path(name).stem
    elif name.startswith("hf:"):
        return load_hf_dataset(name[3:], **mapping)
    else:
        raise ValueError(
            f"unknown benchmark or file {name!r}; known: {', '.join([*BENCHMARKS, *GENERATED])}, a .jsonl/.csv/.parquet path, "
            "or hf:<dataset name>"
        )
    if reader == "gsm8k":
        return list(load_gsm8k(path, source=source))
    if reader == "math":
        return list(load_math(path, source=source))
    if reader == "competition":
        return list(load_competition(path, source=source))
    return load_table(path, source=source if name in BENCHMARKS else None, **mapping)


# ---- readers --------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line raises DataError."""
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"invalid JSON: {e.msg}", lineno) from None
            if not isinstance(obj, dict):
                raise DataError(path, "each line must be a JSON object", lineno)
            yield lineno, obj


def _require(row: dict[str, Any], key: str, path: Path, lineno: int) -> Any:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(path, "missing or empty", lineno, key)
    return value


_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$")


def gsm8k_gold(solution: str) -> str | None:
    """The final answer after `####` in a GSM8K solution, thousands separators removed."""
    lines = solution.strip().splitlines()
    m = _GSM8K_FINAL.search(lines[-1]) if lines else None
    return m.group(1).replace(",", "").strip() if m else None


def load_gsm8k(path: str | Path, source: str = "gsm8k") -> Iterator[Problem]:
    path = Path(path)
    for lineno, row in read_jsonl(path):
        question = _require(row, "question", path, lineno)
        solution = _require(row, "answer", path, lineno)
        gold = gsm8k_gold(str(solution))
        if gold is None:
            raise DataError(path, "no '#### N' final answer", lineno, "answer")
        yield Problem(f"{source}-{lineno - 1}", str(question), gold, str(solution), None, source)


def load_math(path: str | Path, source: str = "math") -> Iterator[Problem]:
    path = Path(path)
    for lineno, row in read_jsonl(path):
        question = _require(row, "problem", path, lineno)
        gold = _require(row, "answer", path, lineno)
        level = row.get("level")
        if isinstance(level, str):
            m = re.search(r"\d", level)
            level = int(m.group()) if m else None
        yield Problem(
            str(row.get("unique_id") or f"{source}-{lineno - 1}"),
            str(question),
            str(gold),
            row.get("solution"),
            level,
            source,
            row.get("subject"),
        )


def _answer_str(value: Any) -> str:
    """Answers stored as numbers (AMC's 27.0) become their plain string ("27")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def load_competition(path: str | Path, source: str = "competition") -> Iterator[Problem]:
    path = Path(path)
    for lineno, row in read_jsonl(path):
        question = row.get("problem") or row.get("question")
        if not question:
            raise DataError(path, "missing or empty", lineno, "problem")
        gold = _require(row, "answer", path, lineno)
        yield Problem(
            f"{source}-{row.get('id', lineno - 1)}",
            str(question),
            _answer_str(gold),
            row.get("solution"),
            None,
            source,
            meta={"url": row["url"]} if row.get("url") else {},
        )


def _rows_of(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        yield from read_jsonl(path)
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            for lineno, row in enumerate(reader, 2):
                yield lineno, dict(row)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(path, "reading Parquet needs pyarrow: pip install 'edgereason[hf]'") from None
        for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield i, row
    else:
        raise DataError(path, f"unsupported file type {suffix!r}; use .jsonl, .csv, .tsv or .parquet")


_QUESTION_KEYS = ("question", "problem", "prompt", "input")
_ANSWER_KEYS = ("answer", "gold", "gold_answer", "target", "output")


def load_table(
    path: str | Path,
    question: str | None = None,
    answer: str | None = None,
    id: str | None = None,
    solution: str | None = None,
    level: str | None = None,
    choices: str | None = None,
    source: str | None = None,
) -> list[Problem]:
    """Any JSONL/CSV/TSV/Parquet file; column names are given or guessed from common ones.

    A GSM8K-style answer column ("... #### 42") is reduced to its final answer.
    """
    path = Path(path)
    source = source or path.stem
    problems: list[Problem] = []
    for lineno, row in _rows_of(path):
        row = _multiple_choice_shape(row)
        q_key = question or next((k for k in _QUESTION_KEYS if k in row), _QUESTION_KEYS[0])
        a_key = answer or next((k for k in _ANSWER_KEYS if k in row), _ANSWER_KEYS[0])
        q = _require(row, q_key, path, lineno)
        a = row.get(a_key)
        if a is None or (isinstance(a, str) and not a.strip()):
            raise DataError(path, "missing or empty", lineno, a_key)
        gold = gsm8k_gold(a) if isinstance(a, str) and "####" in a else _answer_str(a)
        opts = row.get(choices or "choices")
        if isinstance(opts, str):
            opts = json.loads(opts) if opts.strip().startswith("[") else [o.strip() for o in opts.split("|")]
        if opts:
            gold = _choice_gold(a, [str(o) for o in opts], path, lineno, a_key)
        lvl = row.get(level or "level")
        problems.append(
            Problem(
                str(row.get(id or "id", f"{source}-{len(problems)}")),
                str(q),
                str(gold),
                row.get(solution) if solution else row.get("solution", row.get("rationale")),
                int(re.sub(r"\D", "", str(lvl))) if lvl not in (None, "") and re.search(r"\d", str(lvl)) else None,
                source,
                row.get("subject"),
                tuple(str(o) for o in opts) if opts else None,
            )
        )
    if not problems:
        raise DataError(path, "no problems in file")
    return problems


def _multiple_choice_shape(row: dict[str, Any]) -> dict[str, Any]:
    """ARC rows (choices={text, label}, answerKey) and HellaSwag rows (ctx, endings, label) in the
    plain shape: question, choices list, answer."""
    ch = row.get("choices")
    if isinstance(ch, dict) and "text" in ch:
        labels = [str(x) for x in ch.get("label", [])]
        key = str(row.get("answerKey", row.get("answer", "")))
        answer = labels.index(key) if key in labels else key
        return {**row, "choices": list(ch["text"]), "answer": answer}
    if "endings" in row and "ctx" in row:
        return {**row, "question": f"Choose the most plausible continuation: {row['ctx']}",
                "choices": list(row["endings"]), "answer": int(row["label"]) if str(row.get("label", "")).strip() else None}
    return row


def _choice_gold(answer: Any, options: list[str], path: Path, lineno: int, key: str) -> str:
    """The gold answer of a multiple-choice row as a letter (given as a letter, an index or the text)."""
    text = str(answer).strip()
    if isinstance(answer, int) or text.isdigit():
        index = int(text)
    elif len(text) == 1 and text.upper() in LETTERS[: len(options)]:
        index = LETTERS.index(text.upper())
    elif text in options:
        index = options.index(text)
    else:
        raise DataError(path, f"answer {text!r} is not a choice letter, index or choice text", lineno, key)
    if not 0 <= index < len(options):
        raise DataError(path, f"answer index {index} outside the {len(options)} choices", lineno, key)
    return LETTERS[index]


def load_hf_dataset(name: str, split: str = "test", config: str | None = None, **mapping: str) -> list[Problem]:
    """A Hugging Face dataset by name (needs network access to the hub, or its local cache)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise RuntimeError("loading hub datasets needs `datasets`: pip install 'edgereason[hf]'") from None
    ds = load_dataset(name, config, split=split)
    # Materialise once as JSONL so hub data goes through the same validated reader as local files.
    out = cache_dir() / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{split}.jsonl"
    ds.to_json(str(out))
    return load_table(out, source=name, **mapping)


# ---- selection and difficulty ---------------------------------------------------------------


def sample_problems(problems: Sequence[Problem], limit: int | None = None, seed: int | None = None) -> list[Problem]:
    """The first `limit` problems, or a seeded random sample of that size when `seed` is given."""
    items = list(problems)
    if seed is not None:
        items = random.Random(seed).sample(items, len(items))
    return items[:limit] if limit else items


def filter_by_level(problems: Iterable[Problem], levels: Iterable[int]) -> list[Problem]:
    """Problems whose MATH level is in `levels` (problems without a level are dropped)."""
    wanted = set(levels)
    return [p for p in problems if p.level in wanted]


def dataset_hash(problems: Iterable[Problem]) -> str:
    """A stable content hash of a problem list (for run records)."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.question, p.gold_answer], ensure_ascii=False).encode())
    return h.hexdigest()[:16]
