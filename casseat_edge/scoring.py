"""Re-score eval results offline with the rule-based answer checker.

Each result row names a `pid` and carries either an already-extracted `answer` or the raw model
`response` (then `answers.extract` reads it). Every row is re-checked with `answers.is_correct`, so
a summary never trusts a `correct` flag written by another tool. Summaries say
`"method": "rule-extracted"` so they are not mistaken for GPT-judged leaderboard numbers.

    problems = {p["pid"]: p for p in load_jsonl_problems("bench/problems.jsonl").rows}
    summary = score_file("runs/x/results.jsonl", problems, bench="bench/problems.jsonl")
    summary["accuracy"], summary["by_family"]["clock"]["accuracy"]

`score_file` refuses a file with no rows, or none of whose pids is in the problem set (results
of another bench would otherwise score 0/0); rows of unknown pids are listed in `missing`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from casseat_edge.answers import extract, is_correct
from casseat_edge.artifacts import read_jsonl
from casseat_edge.errors import DataError

METHOD = "rule-extracted"


def score_rows(
    results: list[dict[str, Any]], problems: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Summary of `results` checked against `problems` (pid -> problem): see the module doc."""
    if not isinstance(results, (list, tuple)):
        raise TypeError(
            f"score_rows: results must be a list of dicts, found {type(results).__name__}"
        )
    _check_problems(problems, "score_rows")
    return _score(((f"results[{i}]", row) for i, row in enumerate(results)), problems)


def score_file(
    results_path: str | Path,
    problems: dict[str, dict[str, Any]],
    bench: str | Path = "the problem set",
) -> dict[str, Any]:
    """`score_rows` over a results JSONL file; a bad line is a `DataError` naming `file:line`,
    and so is a file with no rows or with no pid in `problems` (`bench` names where they came
    from)."""
    path = Path(results_path)
    if not path.is_file():
        raise DataError(f"{path}: results file not found; pass the results.jsonl an eval run wrote")
    _check_problems(problems, "score_file")
    summary = _score(((f"{path}:{lineno}", row) for lineno, row in read_jsonl(path)), problems)
    missing = summary["missing"]
    if summary["n"] == 0 and not missing:
        raise DataError(f"{path}: no result rows; pass the results.jsonl an eval run wrote")
    if summary["n"] == 0:
        raise DataError(
            f"{path}: none of its {len(missing)} result pids (first: {missing[0]!r}) is a problem "
            f"in {bench}; score the results against the bench they were evaluated on"
        )
    return summary


def _check_problems(problems: Any, func: str) -> None:
    if not isinstance(problems, dict):
        raise TypeError(
            f"{func}: problems must be a dict of pid -> problem, found {type(problems).__name__}"
        )


def prediction_for(row: dict[str, Any], problem: dict[str, Any], where: str) -> str | None:
    """The row's `answer` when set, else the answer extracted from its `response`, else None."""
    answer = row.get("answer")
    if answer is not None:
        return _answer_text(answer, where)
    response = row.get("response")
    if response is None:
        if "answer" in row or "response" in row:
            return None
        raise DataError(f"{where}: answer: row has neither 'answer' nor 'response'; add one")
    if not isinstance(response, str):
        raise DataError(f"{where}: response: expected a string, found {type(response).__name__}")
    return extract(response, problem)


def _answer_text(answer: Any, where: str) -> str:
    if isinstance(answer, str):
        return answer
    if isinstance(answer, int) and not isinstance(answer, bool):
        return str(answer)
    if isinstance(answer, float):
        return repr(answer)
    raise DataError(f"{where}: answer: expected a string, number or null, found {answer!r}")


def _row_pid(row: dict[str, Any], where: str) -> str:
    pid = row.get("pid")
    if pid is None or isinstance(pid, (dict, list, bool)):
        raise DataError(
            f"{where}: pid: expected the problem's pid (string or number), found {pid!r}"
        )
    return str(pid)


def _score(
    rows: Iterable[tuple[str, dict[str, Any]]], problems: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    totals, by_family, by_type = _Tally(), {}, {}
    missing: list[str] = []
    unanswered = 0
    for where, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a result row (JSON object), found {row!r:.40}")
        pid = _row_pid(row, where)
        problem = problems.get(pid)
        if problem is None:
            missing.append(pid)
            continue
        prediction = prediction_for(row, problem, where)
        unanswered += prediction is None
        correct = is_correct(prediction, problem)
        family = (problem.get("metadata") or {}).get("family", "unknown")
        answer_type = problem.get("answer_type", "unknown")
        for tally in (totals, _group(by_family, family), _group(by_type, answer_type)):
            tally.add(correct)
    return {
        "method": METHOD,
        **totals.as_dict(),
        "by_family": {k: v.as_dict() for k, v in sorted(by_family.items())},
        "by_answer_type": {k: v.as_dict() for k, v in sorted(by_type.items())},
        "missing": missing,
        "unanswered": unanswered,
    }


class _Tally:
    """Rows seen and rows correct for one group."""

    def __init__(self) -> None:
        self.n = 0
        self.correct = 0

    def add(self, correct: bool) -> None:
        self.n += 1
        self.correct += int(correct)

    def as_dict(self) -> dict[str, Any]:
        accuracy = self.correct / self.n if self.n else 0.0
        return {"n": self.n, "correct": self.correct, "accuracy": accuracy}


def _group(groups: dict[str, _Tally], key: Any) -> _Tally:
    return groups.setdefault(str(key), _Tally())
