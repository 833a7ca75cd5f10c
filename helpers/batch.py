"""A batch that survives: many items, bounded concurrency, retries, and a checkpoint to resume from (lesson 09).

:func:`run_batch` answers a list of items ``{"id": ..., "text": ...}`` with ``call(text)`` on a pool of threads
(``run_threads`` from ``helpers.runs``), each call retried by ``helpers.retry`` and optionally paced by a
``helpers.throttle.Throttle``. Every result, answer or final error, is appended to a JSONL checkpoint as soon as
it arrives: one complete line per write, flushed and synced to disk, keyed by the item's id and carrying a
digest of its text (``"input"``). So:

- a run that is interrupted (a stopped cell, a crash, ``kill -9``) loses at most the calls that were in flight;
- running it again calls only the items without a result in the checkpoint (``retry_failed=True`` also calls
  the ones that failed), and running a finished batch again makes no call at all;
- a last line cut short by a crash is found, reported, removed, and its item done again.

What the checkpoint guarantees besides (``helpers.checkpoint`` holds the file logic):

- **one run at a time**: a run holds an exclusive OS lock on the checkpoint from before it reads it until it
  ends. A second run on it, from another process or another thread, raises :class:`CheckpointInUse` naming the
  first (its pid and start time) before it reads, repairs or calls anything. A killed run's lock goes with it.
- **only its own files**: a file whose lines are not results ``{"id": ..., "ok": true | false, ...}`` (settings,
  a CSV, binary data) is refused with a ``ValueError`` and left byte for byte as it was. Lines another program
  wrote in that shape are taken over (lesson 09's own loop writes them): without ``"input"``, they match by id.
- **no stale answers**: ids are keyed with their type (``1`` and ``"1"`` are different items; one list may not
  mix them). An item whose saved result was answered for another text is refused with a ``ValueError`` naming
  its id, before any call; ``redo_changed=True`` calls those items again (their new lines count from then on).
- **a full disk stops the run cleanly**: the write that failed is taken back, so every line stays whole; no
  new call starts, the calls in flight end unsaved, and a :class:`CheckpointError` (an ``OSError``) names the
  checkpoint, says how many results it holds and how to resume. A line left cut is repaired by the next run.

The returned :class:`BatchReport` is a :class:`~helpers.runs.RunReport` (``helpers.draw`` draws it) with the
counts of the batch: answered, failed, skipped because the checkpoint had them, attempts, tokens and a cost
estimate at the model's list price (``helpers.quota``). Answers come back in input order.

Against a real provider, ``target`` makes it safe: more workers than ``target.max_in_flight`` is refused, and
so is a batch that would not fit in what is left of the quota guard's budget, before any call.

``python -m helpers.batch ITEMS.jsonl CHECKPOINT.jsonl`` classifies a JSONL file of items from a shell (it is
the same code, for a shell or a scheduler).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .calls import MalformedResponse, answer_from
from .checkpoint import Checkpoint, CheckpointError, CheckpointInUse, id_key, input_digest, read_checkpoint
from .quota import PRICES_AS_OF, QuotaExceeded, estimate_cost, estimate_tokens
from .retry import with_retries
from .runs import Answer, CallRecord, RunReport, _check_workers, plural, run_threads
from .throttle import Throttle

__all__ = [
    "DATASET",
    "LABELS",
    "BatchReport",
    "CheckpointError",
    "CheckpointInUse",
    "UsageAnswer",
    "classify",
    "load_items",
    "read_checkpoint",
    "run_batch",
]

DATASET = Path(__file__).resolve().parent.parent / "data" / "messages.jsonl"
"""The workbook's 200 customer messages (``id``, ``text``, ``label``): one of :data:`LABELS` each."""

LABELS = ("billing", "technical", "account", "feedback")


@dataclass
class UsageAnswer(Answer):
    """An :class:`~helpers.runs.Answer` that also says how its tokens split into prompt and answer (for prices)."""

    input_tokens: int | None = None
    output_tokens: int | None = None


# --- the call of lesson 09 ----------------------------------------------------------------------------------


def classify(client: httpx.Client, model: str, text: str, labels: Sequence[str] = LABELS) -> UsageAnswer:
    """Ask for one label of ``labels`` for a customer message, as structured output (lesson 09).

    The request asks for JSON matching a schema whose ``label`` is one of ``labels`` (OpenAI's
    ``response_format``); the answer is that label, with the tokens the call used. An answer that is not one of
    the labels raises :class:`~helpers.calls.MalformedResponse` (not retried: the same question gets the same
    kind of answer).
    """
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": list(labels)}},
        "required": ["label"],
        "additionalProperties": False,
    }
    request = {
        "model": model,
        "messages": [
            {
                "role": "system",
                "content": "Classify the customer message into exactly one of: " + ", ".join(labels) + ".",
            },
            {"role": "user", "content": text},
        ],
        "response_format": {"type": "json_schema", "json_schema": {"name": "label", "schema": schema, "strict": True}},
        "max_tokens": 20,
    }
    response = client.post("/chat/completions", json=request)
    content = answer_from(response)  # an APIError for 4xx/5xx, MalformedResponse for a broken body
    try:
        label = json.loads(content)["label"]
    except (ValueError, KeyError, TypeError):
        label = content.strip().strip('"').lower()  # some models answer the bare label
    if label not in labels:
        raise MalformedResponse(200, f"the answer is not one of the labels {', '.join(labels)}: {content[:60]!r}")
    usage = response.json().get("usage") or {}
    return UsageAnswer(
        label,
        tokens=_count(usage.get("total_tokens")),
        input_tokens=_count(usage.get("prompt_tokens")),
        output_tokens=_count(usage.get("completion_tokens")),
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# --- items and the checkpoint -------------------------------------------------------------------------------


def load_items(path: str | os.PathLike[str] = DATASET) -> list[dict[str, Any]]:
    """The items of a JSONL file, one JSON object a line (the workbook's 200 messages by default)."""
    items = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except ValueError as exc:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({exc})") from None
    return items


def _check_path(checkpoint: str | os.PathLike[str]) -> Path:
    try:
        path = Path(checkpoint)
    except TypeError:
        raise ValueError(f"checkpoint must be a file path (got {checkpoint!r})") from None
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder; give the path of a file, e.g. {path / 'batch.jsonl'}")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"cannot write the checkpoint {path}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise ValueError(f"cannot write the checkpoint {path}: the folder {parent} does not exist (create it first)")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        raise ValueError(f"cannot write the checkpoint {path}: {exc.strerror or exc}") from None
    os.close(fd)  # Checkpoint.open then refuses what is not a regular file (/dev/null, a FIFO), before any call
    return path


def _check_items(items: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(items, str | bytes | Mapping):
        raise ValueError('items must be a list of {"id": ..., "text": ...} dictionaries')
    listed = list(items)
    seen: dict[str, int] = {}
    for i, item in enumerate(listed):
        if not isinstance(item, Mapping):
            raise ValueError(f'items[{i}] must be a dictionary {{"id": ..., "text": ...}} (got {type(item).__name__})')
        if "id" not in item:
            raise ValueError(f"items[{i}] has no id: every item needs a unique id, its key in the checkpoint")
        key = item["id"]
        if isinstance(key, bool) or not isinstance(key, str | int) or key == "":
            raise ValueError(f"items[{i}] has id {key!r}: an id must be a non-empty string or a whole number")
        if isinstance(key, int) and not -(2**63) <= key < 2**63:
            raise ValueError(
                f"items[{i}] has a {key.bit_length()}-bit whole-number id: an id number must fit in 64 bits "
                "(-2**63 to 2**63 - 1), as other JSON readers of the checkpoint need; use a string id"
            )
        if isinstance(key, str) and any("\ud800" <= c <= "\udfff" for c in key):
            raise ValueError(f"items[{i}] has id {key!r}, with a lone surrogate: not text UTF-8 can hold; fix it")
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            what = "no text" if "text" not in item else f"text {text!r}"
            raise ValueError(f"items[{i}] (id {key!r}) has {what}: every item needs a non-empty string to send")
        if str(key) in seen:
            other = listed[seen[str(key)]]["id"]
            why = "" if other == key else f" ({other!r} and {key!r} differ only in type: surely a mistake)"
            raise ValueError(
                f"duplicate id {key!r} at items[{seen[str(key)]}] and items[{i}]{why}: ids must be unique, since "
                "the checkpoint knows items by id"
            )
        seen[str(key)] = i
    return listed


# --- the report -----------------------------------------------------------------------------------------


@dataclass(repr=False)
class BatchReport(RunReport):
    """One run of a batch: its calls (a :class:`RunReport`: ``draw(report)``) and the batch's counts.

    The records are this run's calls, with ``index`` the item's position in the input. ``results`` holds, for
    every item in input order, its entry in the checkpoint (from this run or an earlier one), or None.
    """

    checkpoint: Path = Path()
    total: int = 0
    answered: int = 0
    failed: int = 0
    skipped: int = 0
    redone: int = 0
    attempts: int = 0
    tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None
    repaired: str | None = None
    results: list[dict[str, Any] | None] = field(default_factory=list)

    @property
    def answers(self) -> list[Any]:
        """Answers in input order: ``answers[i]`` belongs to ``items[i]``; None where it failed or is not done."""
        return [r.get("answer") if r is not None and r["ok"] else None for r in self.results]

    @property
    def still_failed(self) -> int:
        """Items whose last result in the checkpoint is a failure (from this run or an earlier one)."""
        return sum(r is not None and not r["ok"] for r in self.results)

    @property
    def remaining(self) -> int:
        """Items without a result yet (left by ``limit``, ``cancel`` or an interruption): the next run does them."""
        return sum(r is None for r in self.results)

    @property
    def cost(self) -> float | None:
        """Dollars this run's tokens cost at the model's list price, or None when the price is not known."""
        return self.cost_at(self.model)

    def cost_at(self, model: str | None) -> float | None:
        """Dollars this run's tokens would cost at ``model``'s list price (``helpers.quota.PRICES``)."""
        return estimate_cost(model, self.input_tokens, self.output_tokens)

    def counts(self) -> dict[str, Any]:
        """The batch's counts, for a table: this run's work, and what the checkpoint already had."""
        cost = self.cost
        return {
            "items": self.total,
            "answered": self.answered,
            "failed": self.failed,
            "skipped (in checkpoint)": self.skipped,
            "not done yet": self.remaining,
            "calls": self.n,
            "attempts": self.attempts,
            "tokens": self.tokens,
            "cost": "price unknown" if cost is None else f"${cost:.4f}",
        }

    def describe(self) -> str:
        """A few lines saying what this run did (what a batch script prints at the end)."""
        cost = self.cost
        price = (
            f"price of {self.model} unknown"
            if cost is None
            else f"about ${cost:.4f} at {self.model} list prices of {PRICES_AS_OF}"
        )
        lines = [
            f"{self.total} items: {self.answered} answered and {self.failed} failed in this run, "
            f"{self.skipped} skipped (already in the checkpoint), {self.remaining} not done yet",
            f"{self.n} calls, {self.attempts} attempts, {self.tokens:,} tokens ({price}), wall {self.wall:.2f} s",
        ]
        if self.repaired:
            lines.append(f"repaired: {self.repaired}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<BatchReport {self.total} items: {self.answered} answered, {self.failed} failed, "
            f"{self.skipped} skipped, {self.remaining} not done; {self.attempts} attempts, wall {self.wall:.2f} s>"
        )


# --- the pipeline ---------------------------------------------------------------------------------------


def run_batch(
    call: Callable[[str], Any],
    items: Iterable[Mapping[str, Any]],
    *,
    checkpoint: str | os.PathLike[str],
    workers: int = 4,
    target: Any = None,
    attempts: int = 4,
    base: float = 0.5,
    max_wait: float = 30.0,
    rng: int | None = None,
    rpm: float | None = None,
    retry_failed: bool = False,
    redo_changed: bool = False,
    limit: int | None = None,
    cancel: threading.Event | None = None,
    progress: bool = True,
    max_tokens: int | None = None,
) -> BatchReport:
    """Answer every item with ``call(item["text"])``, safely: a checkpoint line per result (lesson 09).

    - ``workers`` threads call at once (``run_threads``); each call is tried up to ``attempts`` times with
      backoff from ``base`` seconds and at most ``max_wait`` seconds of waiting (``helpers.retry``; ``rng`` seeds
      the jitter); with ``rpm``, every attempt first waits for its turn (``helpers.throttle.Throttle``).
    - ``checkpoint`` (a JSONL path) gets one line per item: ``{"id", "ok", "answer" | "error", "attempts",
      "tokens", "input", ...}``. Items it already has are skipped; with ``retry_failed=True`` items whose last
      result is a failure are called again. A last line cut short by a crash is removed and its item done again.
      The run holds the checkpoint's lock: a second run on it raises :class:`CheckpointInUse`, changing nothing.
    - An item whose text is not the one its saved result was answered for (``"input"``, a digest of the text)
      is an error naming its id, before any call; ``redo_changed=True`` calls such items again. A line with no
      ``"input"`` (written by another program) matches by id alone.
    - ``limit`` calls at most that many items now (the first ones still to do); ``cancel`` (a
      ``threading.Event``) stops starting calls once set, keeping the answers in flight. Either way, run it again
      to finish.
    - ``target`` (from ``connect()``): against a real provider, more than ``target.max_in_flight`` workers is
      refused, and so is a batch the quota guard's budget cannot hold (``QuotaExceeded``), before any call;
      ``max_tokens`` (the longest answer expected) sharpens that estimate. It also names the model for the cost.

    ``call`` returns the answer (a string, or an :class:`~helpers.runs.Answer` that carries its tokens: see
    :func:`classify`), or any JSON data (a number, a list, a dict); a pydantic model is saved (and comes back in
    ``answers``) as ``model_dump(mode="json")``. An answer that is anything else cannot be saved: the first one
    stops the batch with a ``TypeError`` that names its type (its call was made; the answers before it are
    saved). Bad input (``workers < 1``, duplicate ids, an item without text, a checkpoint that cannot
    be written, a file that is not a checkpoint) raises ``ValueError`` before anything is called. A write the
    disk refuses stops the run with a :class:`CheckpointError` that says what is saved and how to resume.
    """
    if not callable(call):
        raise ValueError(
            f"call must be a function of one text, e.g. lambda text: ask(client, model, text) (got {call!r})"
        )
    if inspect.iscoroutinefunction(call):
        raise ValueError("run_batch runs calls on threads: give it a plain function, not an async one")
    workers = _check_workers(workers)
    listed = _check_items(items)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a whole number, 0 or more (got {limit!r}); leave it out for every item")
    throttle = Throttle(rpm=rpm) if rpm is not None else None  # checks rpm
    retrying_options = {"attempts": attempts, "base": base, "max_wait": max_wait, "rng": rng}
    with_retries(call, **retrying_options)  # a bad option is an error now, before anything is read or called
    path = _check_path(checkpoint)

    with Checkpoint.open(path) as store:  # locked until the run ends (read and repaired under the lock)
        results, digests, todo, skipped = _plan(store, listed, retry_failed, redo_changed, limit)
        cap = getattr(target, "max_in_flight", None)
        if cap is not None and workers > cap:
            raise ValueError(
                f"{workers} workers would put {workers} calls in flight against a real provider; the quota guard "
                f"allows at most {cap}. Use workers={cap} or fewer, or the simulator."
            )
        quota = getattr(target, "quota", None)
        if quota is not None and todo:  # refused before the first call if the budget cannot hold it
            per_call = max(estimate_tokens(listed[i]["text"], max_tokens) for i in todo)
            quota.check_run(len(todo), per_call, workers=min(workers, len(todo)))
        problem = store.repair()  # under the lock: nobody else can have appended since it was read
        repaired = None
        if problem:
            repaired = f"checkpoint {path.name}: {problem}; removed it, and its item is done again"
            print(repaired, file=sys.stderr)

        raw_results: dict[int, Any] = {}  # position in todo -> what call returned (its token split)
        local = threading.local()

        def attempt(text: str) -> Any:
            if throttle is not None:
                throttle.acquire()  # every attempt is a request: each waits for its turn
            result = call(text)
            local.raw = result  # the successful attempt's own result (retry keeps only text, attempts, tokens)
            return result

        retrying = with_retries(attempt, **retrying_options)

        def one(position: str) -> Any:
            # run_threads hands each call its "prompt": here the item's position in todo, so that the result can be
            # matched with its item, and the token split of its answer kept.
            k = int(position)
            local.raw = None
            answer = retrying(listed[todo[k]]["text"])
            raw_results[k] = local.raw
            return answer

        bar = _progress(progress, len(listed), skipped)
        counts = {"answered": 0, "failed": 0, "redone": 0}

        def save(record: CallRecord) -> None:
            k = int(record.prompt)
            try:
                entry = _line(listed[todo[k]]["id"], digests[todo[k]], record, raw_results.get(k))
                store.append(entry)
            except (TypeError, ValueError) as exc:  # not JSON data: stop now, rather than lose and bill each one
                saved = sum(r is not None for r in results)
                raise _Unsaveable(listed[todo[k]]["id"], record.answer, exc, saved, len(listed)) from None
            except OSError as exc:  # raised out of the pool, which starts no new call and lets those in flight end
                raise _refused(store, exc, sum(r is not None for r in results), len(listed), counts) from exc
            if results[todo[k]] is not None:
                counts["redone"] += 1
            results[todo[k]] = entry
            counts["answered" if record.ok else "failed"] += 1
            if bar is not None:
                bar.update(1)
                if not record.ok:
                    bar.set_postfix(failed=counts["failed"], refresh=False)

        def report_of(run: RunReport) -> BatchReport:
            """This run's records, back in the items' terms (index in the input, the item's text), with the counts."""
            records = []
            for record in run.records:
                k = int(record.prompt)
                records.append(dataclasses.replace(record, index=todo[k], prompt=listed[todo[k]]["text"]))
            done = [int(r.prompt) for r in run.records if r.delivered is not None]
            raw = [raw_results.get(k) for k in done]
            return BatchReport(
                "batch",
                records,
                run.wall,
                run.cpu,
                workers,
                f"batch ({plural(len(todo), 'item')} on {plural(max(1, min(workers, len(todo))), 'worker')})",
                [todo[k] for k in run.delivery_order],
                run.cancelled,
                checkpoint=path,
                total=len(listed),
                answered=counts["answered"],
                failed=counts["failed"],
                skipped=skipped,
                redone=counts["redone"],
                attempts=sum(r.attempts for r in records if r.delivered is not None),
                tokens=sum(r.tokens or 0 for r in records if r.delivered is not None),
                input_tokens=sum(getattr(one, "input_tokens", None) or 0 for one in raw),
                output_tokens=sum(getattr(one, "output_tokens", None) or 0 for one in raw),
                model=getattr(target, "model", None),
                repaired=repaired,
                results=results,
            )

        try:
            run = run_threads(
                one,
                [str(k) for k in range(len(todo))],
                workers=workers,
                order="completion",
                on_result=save,
                cancel=cancel,
            )
        except _Unsaveable as exc:
            raise TypeError(str(exc)) from None  # from here: the frames of the pool and json say nothing
        except KeyboardInterrupt as exc:  # stopped from outside: every finished call is saved; say so on the way out
            partial = getattr(exc, "report", None)
            if isinstance(partial, RunReport):
                exc.report = report_of(partial)  # type: ignore[attr-defined]
            raise
        finally:
            if bar is not None:
                bar.close()
        return report_of(run)


def _plan(
    store: Checkpoint, listed: list[Mapping[str, Any]], retry_failed: bool, redo_changed: bool, limit: int | None
) -> tuple[list[dict[str, Any] | None], list[str], list[int], int]:
    """Each item's result in the checkpoint (its last line), its input digest, the positions to call, and how
    many are skipped. An item whose saved result was answered for another text is an error, or with
    ``redo_changed`` one more to call."""
    keys = [id_key(item["id"]) for item in listed]
    digests = [input_digest(item["text"]) for item in listed]
    known = set(keys)
    last: dict[str, dict[str, Any]] = {}
    for entry in store.entries:
        key = id_key(entry["id"])
        if key in known:
            last[key] = entry
    results: list[dict[str, Any] | None] = [last.get(key) for key in keys]
    changed = {i for i, r in enumerate(results) if r is not None and "input" in r and r["input"] != digests[i]}
    if changed and not redo_changed:
        ids = [listed[i]["id"] for i in sorted(changed)]
        shown = ", ".join(repr(key) for key in ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        raise ValueError(
            f"checkpoint {store.path} has results for {plural(len(ids), 'item')} whose text is not the text they "
            f"were answered for (ids {shown}): their answers would be stale, so nothing was called. Pass "
            "redo_changed=True (--redo-changed from a shell) to call them again (their new lines count from then "
            "on), or use a new checkpoint."
        )
    todo = [i for i, r in enumerate(results) if r is None or (retry_failed and not r["ok"]) or i in changed]
    skipped = len(listed) - len(todo)
    return results, digests, todo if limit is None else todo[:limit], skipped


def _refused(store: Checkpoint, exc: OSError, saved: int, total: int, counts: Mapping[str, int]) -> CheckpointError:
    """The error of a write the checkpoint's disk refused: what is saved, and how to go on."""
    this_run = counts["answered"] + counts["failed"]
    lines = (
        "every line whole"
        if store.whole
        else "its last line may be cut short: the next run removes it and does that item again"
    )
    error = CheckpointError(
        f"cannot write to the checkpoint {store.path}: {exc.strerror or exc}. The batch stopped: no new call "
        f"starts, and the calls in flight end unsaved. {saved} of {total} items have a result in the checkpoint "
        f"({this_run} saved by this run), {lines}. Make room (free disk space, or allow a larger file), then run "
        "it again with the same checkpoint (the same run_batch call, or the same python -m helpers.batch "
        f"command): it calls only the {total - saved} items without a result."
    )
    error.errno = exc.errno
    return error


class _Unsaveable(Exception):
    """An answer that is not JSON data, on its way out of the pool (raised again as a TypeError)."""

    def __init__(self, key: Any, answer: Any, exc: Exception, saved: int, total: int) -> None:
        super().__init__(
            f"the answer to item {key!r} is a {type(answer).__qualname__}, which the checkpoint cannot save as JSON "
            f"({exc}). The batch stopped: its call was made but its answer is not saved; {saved} of {total} items "
            "have a result in the checkpoint. Make call return a str, a number, a list, a dict (of those) or a "
            "pydantic model (saved as model_dump(mode='json')), e.g. the answer's text, then run it again."
        )


def _line(key: Any, digest: str, record: CallRecord, raw: Any) -> dict[str, Any]:
    """The checkpoint line of one result (a pydantic model answer as its ``model_dump(mode="json")``)."""
    entry: dict[str, Any] = {"id": key, "input": digest, "ok": record.ok}
    if record.ok:
        answer = record.answer
        if callable(getattr(answer, "model_dump", None)) and not isinstance(answer, type):
            answer = answer.model_dump(mode="json")
        entry["answer"] = answer
    else:
        entry["error"] = record.error
    entry["attempts"] = record.attempts
    entry["waited"] = round(record.waited, 3)
    entry["latency"] = round(record.latency, 3)
    if record.tokens is not None:
        entry["tokens"] = record.tokens
    for name in ("input_tokens", "output_tokens"):
        value = getattr(raw, name, None)
        if isinstance(value, int):
            entry[name] = value
    entry["written"] = round(time.time(), 6)  # when it reached the file (seconds since the epoch)
    return entry


def _progress(show: bool, total: int, initial: int) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="batch", unit="item", smoothing=0.1)


# --- python -m helpers.batch ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Classify the items of a JSONL file into a checkpoint, from a shell; run it again to resume."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m helpers.batch",
        description="Classify the items of a JSONL file (id, text) into a JSONL checkpoint, resumably. Calls go "
        "where helpers.connect() sends them: the simulator, or LLM_BASE_URL.",
    )
    parser.add_argument("items", nargs="?", default=str(DATASET), help="JSONL file of items (default: the dataset)")
    parser.add_argument("checkpoint", help="JSONL checkpoint: created, appended to, resumed from")
    parser.add_argument("--workers", type=int, default=4, help="calls at once (default 4)")
    parser.add_argument("--attempts", type=int, default=4, help="tries per item (default 4)")
    parser.add_argument("--base", type=float, default=0.5, help="first backoff ceiling in seconds (default 0.5)")
    parser.add_argument("--rpm", type=float, default=None, help="requests per minute at most (default: no limit)")
    parser.add_argument("--limit", type=int, default=None, help="call at most this many items now")
    parser.add_argument("--retry-failed", action="store_true", help="call the items that failed before again")
    parser.add_argument(
        "--redo-changed", action="store_true", help="call again the items whose text changed since their result"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from .settings import connect

    target = connect()
    try:
        with target.client(connections=max(1, args.workers)) as client:
            report = run_batch(
                lambda text: classify(client, target.model, text),
                load_items(args.items),
                checkpoint=args.checkpoint,
                workers=args.workers,
                target=target,
                attempts=args.attempts,
                base=args.base,
                rpm=args.rpm,
                limit=args.limit,
                retry_failed=args.retry_failed,
                redo_changed=args.redo_changed,
                progress=not args.no_progress,
                max_tokens=20,
            )
    except (ValueError, QuotaExceeded, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.describe())
    failed = report.still_failed  # the final state, this run's or an earlier one's: what a scheduler checks
    answered = report.total - failed - report.remaining
    again = "; --retry-failed calls the failed ones again" if failed else ""
    print(f"checkpoint: {answered} of {report.total} items answered, {failed} end failed{again}")
    return 0 if failed == 0 and report.remaining == 0 else 1


if __name__ == "__main__":  # pragma: no cover - run by hand and by tests in a subprocess
    raise SystemExit(main())
