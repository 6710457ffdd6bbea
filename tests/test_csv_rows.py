"""`exec --output csv` builds its text a column at a time (formats.csv_rows): a CSV reader must
read back exactly the fields the database sent, for every value, and the text is the csv
module's wherever that module quotes correctly."""

from __future__ import annotations

import csv
import datetime
import decimal
import io
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.masking.config import MaskingConfig
from broker.masking.lineage import ColumnSource
from broker.masking.masker import Masker
from broker.masking.plans import MaskPlan
from broker.sessions.formats import ResultWriter, csv_rows, to_text

# Text that is often plain and sometimes holds what CSV must quote.
TEXT = st.text(alphabet=st.sampled_from([*"ab z1,\"'\n\r\t\0;é€", "\u2028", "🙂"]), max_size=12)
VALUE = st.one_of(
    TEXT,
    st.integers(min_value=-(10**20), max_value=10**20),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.binary(max_size=4),
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
)


def csv_module(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([[to_text(v) for v in row] for row in rows])
    return buffer.getvalue()


def batches(value: st.SearchStrategy[Any]) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    return st.integers(min_value=1, max_value=4).flatmap(
        lambda width: st.lists(st.tuples(*[value] * width), max_size=8)
    )


@settings(max_examples=400, deadline=None)
@given(batches(VALUE))
def test_a_csv_reader_reads_back_every_field_of_any_batch(rows: list[tuple[Any, ...]]) -> None:
    text = ResultWriter("csv").rows(rows)
    read = list(csv.reader(io.StringIO(text, newline="")))
    assert read == [[to_text(v) for v in row] for row in rows]


@settings(max_examples=400, deadline=None)
@given(batches(VALUE))
def test_the_text_is_the_csv_modules_where_no_field_holds_a_carriage_return(
    rows: list[tuple[Any, ...]],
) -> None:
    # Python 3.11's csv module leaves "\r" unquoted with "\n" line ends (the reader then splits
    # the field); everywhere else the two agree byte for byte.
    if any("\r" in to_text(v) for row in rows for v in row):
        return
    assert csv_rows(rows) == csv_module(rows)


def test_fields_are_quoted_only_where_needed() -> None:
    plain = [(1, "user1@example.com", None), (2, "[REDACTED]", "order 2 shipped")]
    assert csv_rows(plain) == "1,user1@example.com,\n2,[REDACTED],order 2 shipped\n"
    assert csv_rows([(1, 'say "hi"'), (2, "a,b")]) == '1,"say ""hi"""\n2,"a,b"\n'
    assert csv_rows([(1, "cr\r"), (2, "lf\n")]) == '1,"cr\r"\n2,"lf\n"\n'
    assert csv_rows([("",), (None,), ("x",)]) == '""\n""\nx\n'  # no empty lines
    assert csv_rows([(1, datetime.date(2026, 1, 2), decimal.Decimal("1.50"), True, b"\x01")]) == (
        "1,2026-01-02,1.50,True,\\x01\n"
    )


@settings(max_examples=300, deadline=None)
@given(
    batches(VALUE),
    st.sampled_from(["redact", "partial", "hash"]),
    st.integers(min_value=0, max_value=3),
    st.lists(st.sampled_from(["email", "card", "phone"]), max_size=2),
)
def test_masked_batches_write_the_csv_of_the_rows_masked_one_at_a_time(
    rows: list[tuple[Any, ...]], strategy: str, ruled: int, detectors: list[str]
) -> None:
    # Masking hands CSV the columns it already took apart (RowBatch); the text must be what
    # the same rows give when each is masked alone and written as plain rows.
    width = len(rows[0]) if rows else 1
    names = [f"c{i}" for i in range(width)]
    config = MaskingConfig.model_validate(
        {
            "columns": [{"match": [names[ruled % width]], "strategy": strategy}],
            "detectors": detectors,
        }
    )

    def plan() -> MaskPlan:
        masker = Masker(config, hash_key=b"k" * 32)
        return masker.plan([ColumnSource(name, (f"t.{name}",)) for name in names])

    batch = plan().apply_batch(rows)
    one_by_one = plan()
    alone = [one_by_one.apply(row) for row in rows]
    assert list(batch) == alone
    assert csv_rows(batch) == csv_rows(alone)
