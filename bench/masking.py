"""Masking benchmark: rows per CPU-second of MaskPlan.apply and MaskPlan.apply_batch.

    .venv/bin/python -m bench.masking [--rows 1000000]

In process, no services: synthetic 9-column rows (and the 3-column rows of bench/sql.py)
through the masking of one result set, one row at a time (``apply``) and 500 rows at a time
(``apply_batch``), for no masking, column rules, the nine value detectors and both together.
Seconds of CPU time (time.process_time): on a busy machine as on an idle one. docs/masking.md
has a recent run. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from broker.masking.config import MaskColumnRule, MaskingConfig
from broker.masking.detectors import DETECTORS
from broker.masking.lineage import ColumnSource
from broker.masking.masker import Masker


def _synthetic_rows(count: int, *, with_email: bool) -> list[tuple[object, ...]]:
    import datetime
    import decimal

    base = datetime.datetime(2024, 1, 15, 10, 30)
    statuses = ("active", "suspended", "pending review", "closed")
    rows = []
    for i in range(count):
        rows.append(
            (
                i,
                f"Customer {i:06d}",
                f"user{i}@example.com" if with_email else f"user{i}",
                f"+1 415 555 {i % 10000:04d}",
                statuses[i % 4],
                base + datetime.timedelta(minutes=i),
                decimal.Decimal(i % 1000) / 7,
                i % 3 == 0,
                f"order {i} shipped to warehouse {i % 17}, tracking number pending",
            )
        )
    return rows


_BENCH_COLUMNS = ("id", "name", "email", "phone", "status", "created", "balance", "vip", "note")


def benchmark(rows: int = 1_000_000, *, out: Any = None) -> dict[str, float]:
    """Rows per second of MaskPlan.apply (one row at a time) and MaskPlan.apply_batch (500 rows
    at a time) on synthetic 9-column rows; prints them and returns {"case, apply": rate, ...}.
    Seconds of CPU time (time.process_time): on a busy machine as on an idle one."""
    out = out or sys.stdout
    pool = 200_000 if rows > 200_000 else rows
    plain = _synthetic_rows(pool, with_email=False)
    emails = _synthetic_rows(pool, with_email=True)
    # The rows of bench/sql.py: id, an email address, a note (every 100th with a card number).
    exported = [
        (
            i,
            f"user{i}@example.com",
            f"paid with 4111 1111 1111 1111 order {i}"
            if i % 100 == 0
            else f"order {i} shipped to desk {i % 97}",
        )
        for i in range(1, pool + 1)
    ]
    columns = [ColumnSource(n, (f"public.customers.{n}",)) for n in _BENCH_COLUMNS]
    big = [ColumnSource(n, (f"public.big.{n}",)) for n in ("id", "email", "note")]
    key = b"benchmark-key"
    every = MaskingConfig(detectors=list(DETECTORS))
    cases: list[tuple[str, MaskingConfig, list[tuple[object, ...]], list[ColumnSource]]] = [
        ("no masking (fast path)", MaskingConfig(), plain, columns),
        (
            "column rules: redact email, partial phone",
            MaskingConfig(
                columns=[
                    MaskColumnRule(match=["email"]),
                    MaskColumnRule(match=["phone"], strategy="partial"),
                ]
            ),
            emails,
            columns,
        ),
        (
            "column rules: hash email (mostly distinct values)",
            MaskingConfig(columns=[MaskColumnRule(match=["email"], strategy="hash")]),
            emails,
            columns,
        ),
        (
            "all detectors, nothing sensitive in the text columns",
            every,
            [(*r[:3], "n/a", *r[4:]) for r in plain],
            columns,
        ),
        ("all detectors, an email and a phone in every row", every, emails, columns),
        (
            "column rules + all detectors (email, phone by rule)",
            MaskingConfig(
                columns=[MaskColumnRule(match=["email", "phone"])], detectors=list(DETECTORS)
            ),
            emails,
            columns,
        ),
        ("bench/sql.py rows (id, email, note), all detectors", every, exported, big),
    ]
    results: dict[str, float] = {}
    print(f"masking benchmark: {rows} rows (9 columns; bench/sql.py rows: 3)", file=out)
    print(f"  {'case':<55} {'apply':>12} {'apply_batch':>12}", file=out)
    for label, config, data, cols in cases:
        rates = []
        for batched in (False, True):
            plan = Masker(config, hash_key=key).plan(cols)
            apply, apply_batch = plan.apply, plan.apply_batch
            done = 0
            start = time.process_time()
            while done < rows:
                chunk = data[: min(len(data), rows - done)]
                if batched:
                    for at in range(0, len(chunk), 500):
                        apply_batch(chunk[at : at + 500])
                else:
                    for row in chunk:
                        apply(row)
                done += len(chunk)
            rate = rows / (time.process_time() - start)
            results[f"{label}, {'apply_batch' if batched else 'apply'}"] = rate
            rates.append(rate)
        print(f"  {label:<55} {rates[0]:>12,.0f} {rates[1]:>12,.0f}  rows/s", file=out)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.masking",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per case (default 1M)")
    args = parser.parse_args(argv)
    benchmark(args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
