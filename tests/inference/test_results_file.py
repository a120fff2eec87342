"""Properties of the results file's resume logic: whatever a kill leaves, resuming keeps only
whole rows of the right producer, drops nothing complete, and lists every image once."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pneumolab.errors import OutputError
from pneumolab.inference.results_file import (
    LEGACY_FIELDS,
    LIST_SEPARATOR,
    TERMINATOR,
    NotAResultsFile,
    Producer,
    ResultRow,
    decode_text,
    encode,
    header,
    parse,
    plan_resume,
)

PRODUCER = Producer("0.1.0+0123456789ab", 0.4137, "torch", False)
FILE = Path("results")
sources = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
SUBTYPES = [(None,) * 4, ("VIRAL", 0.1, 0.2, 0.7), (None, 0.625, 0.25, 0.125)]
"""A three-class run's subtype cells (a binary run's: all empty)."""
rows = st.builds(
    lambda source, probability, error, in_scope, subtype: ResultRow(
        source,
        None if error else probability,
        None
        if error
        else "OUT_OF_SCOPE"  # PRODUCER labels flagged images so
        if in_scope is False
        else ("PNEUMONIA" if probability >= PRODUCER.threshold else "NORMAL"),
        PRODUCER,
        error,
        (None if error else in_scope, None, None, None, None),
        SUBTYPES[0] if error else subtype,
    ),
    sources,
    st.floats(0, 1),
    st.sampled_from(["", "x.png: corrupt or undecodable image (truncated)", 'a,"b"\r\nc']),
    st.sampled_from([None, True, False]),  # CSV read in_scope back as the text "True"
    st.sampled_from(SUBTYPES),
)
formats = st.sampled_from(["csv", "jsonl"])


def file_bytes(fmt: str, written: list[ResultRow]) -> bytes:
    return (header(fmt) + "".join(encode(r, fmt) for r in written)).encode("utf-8")


@given(st.lists(rows, max_size=8), formats)
def test_rows_round_trip(written, fmt):
    parsed = parse(decode_text(file_bytes(fmt, written)), fmt, FILE)
    assert parsed.rows == written and not parsed.torn


def test_csv_writes_booleans_alike_and_reads_those_of_before():
    """in_scope was written True / False beside tta's true / false."""
    row = ResultRow("a.png", 0.9, "PNEUMONIA", PRODUCER, "", (False, 1.0, 2.0, [], []))
    line = encode(row, "csv")
    assert ",false," in line and "False" not in line
    older = header("csv") + line.replace(",false,", ",False,", 1)
    (parsed,) = parse(decode_text(older.encode()), "csv", FILE).rows
    assert parsed.scope[0] is False and parsed.scope_verdict() is False


@settings(max_examples=300)
@given(st.lists(rows, max_size=8), formats, st.data())
def test_a_kill_at_any_byte_loses_only_the_row_being_written(written, fmt, data):
    full = file_bytes(fmt, written)
    cut = data.draw(st.integers(0, len(full)))
    retried = data.draw(st.sets(st.sampled_from([r.source for r in written] or ["x"])))
    plan = plan_resume(decode_text(full[:cut]), fmt, PRODUCER, FILE, retried)
    complete = [r for i, r in enumerate(written) if len(file_bytes(fmt, written[: i + 1])) <= cut]
    expected: dict[str, ResultRow] = {}  # first success, else an error of a source not retried
    for row in complete:
        succeeded = row.source in expected and not expected[row.source].error
        if not succeeded and not (row.error and row.source in retried):
            expected[row.source] = row
    assert plan.kept == list(expected.values())  # whole rows only, each source once
    boundaries = {len(file_bytes(fmt, written[:i])) for i in range(len(written) + 1)}
    torn = cut not in boundaries
    assert plan.rewrite == (torn or len(expected) != len(complete) or cut == 0)


@settings(max_examples=200)
@given(st.lists(rows, min_size=1, max_size=8), formats, st.data())
def test_resumed_then_finished_file_has_every_source_once(written, fmt, data):
    full = file_bytes(fmt, written)
    cut = data.draw(st.integers(0, len(full)))
    job = list({r.source: r for r in written}.values())  # a job lists each image once
    plan = plan_resume(decode_text(full[:cut]), fmt, PRODUCER, FILE, {r.source for r in job})
    done = {r.source for r in plan.kept}
    redone = [r for r in job if r.source not in done]
    final = parse(decode_text(file_bytes(fmt, plan.kept + redone)), fmt, FILE).rows
    successes = [r for r in final if not r.error]
    assert len({r.source for r in successes}) == len(successes)
    assert {r.source for r in final} == {r.source for r in written}


@given(st.binary(max_size=200), formats)
@example(b"junk", "csv")
@example(b"junk", "jsonl")
def test_anything_else_is_parsed_or_refused_never_a_crash(data, fmt):
    text = decode_text(data)
    try:
        plan = plan_resume(text, fmt, PRODUCER, FILE, set())
    except NotAResultsFile as exc:
        assert str(FILE) in str(exc)
    else:  # accepted: only what a pneumolab write (or a kill during the first one) leaves
        assert all(r.producer == PRODUCER for r in plan.kept)
        if TERMINATOR[fmt] not in text:  # no whole line: empty, or a cut first write
            start = header("csv") if fmt == "csv" else '{"source": '
            assert start.startswith(text) or text.startswith(start)
            assert plan.kept == []


@given(st.lists(rows, min_size=1, max_size=4), formats)
def test_rows_of_another_producer_are_refused(written, fmt):
    other = Producer(PRODUCER.model_version, PRODUCER.threshold, "onnx", True)
    with pytest.raises(
        OutputError,
        match="with backend 'torch', tta False, but this command has backend 'onnx', tta True",
    ):
        plan_resume(decode_text(file_bytes(fmt, written)), fmt, other, FILE, set())


def test_a_csv_cell_splits_back_into_its_reasons():
    """A DICOM tag's own "; " (BodyPartExamined "CHEST; ABDOMEN") made one reason two."""
    reasons = ["DICOM BodyPartExamined CHEST; ABDOMEN: not a chest", "image too small"]
    row = ResultRow("a.png", 0.9, "OUT_OF_SCOPE", PRODUCER, "", (False, 1.0, 2.0, reasons, []))
    (record,) = csv.DictReader(io.StringIO(header("csv") + encode(row, "csv")))
    assert record["reasons"].split(LIST_SEPARATOR) == [
        "DICOM BodyPartExamined CHEST, ABDOMEN: not a chest",
        "image too small",
    ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_file_of_before_the_subtype_columns_is_read_and_rewritten_on_resume(fmt):
    """Files written before the subtype columns were added (2026-12-07) were refused as 'not a
    pneumolab results file' by the new header."""
    row = ResultRow("a.png", 0.9, "PNEUMONIA", PRODUCER, "", (True, None, None, None, None))
    record = {k: v for k, v in row.record().items() if k in LEGACY_FIELDS}
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=LEGACY_FIELDS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerow(record | {"tta": "false", "in_scope": "true"})
        text = buffer.getvalue()
    else:
        text = json.dumps(record) + "\n"
    parsed = parse(text, fmt, FILE)
    assert parsed.rows == [row] and parsed.legacy
    plan = plan_resume(text, fmt, PRODUCER, FILE, set())
    assert plan.kept == [row] and plan.rewrite  # then written with every column
    assert not parse(header(fmt) + encode(row, fmt), fmt, FILE).legacy
