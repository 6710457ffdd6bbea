"""MaskPlan: how the rows of one result set are masked (column rules, then detectors)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import ne

from broker.masking.detectors import _accept
from broker.masking.scanner import _scanner
from broker.masking.strategies import REDACTED, Constant, _as_text

_UNSEEN = object()
_NO_TEXT = (int, float, bool, type(None))
_SCANNED = (str, bytes, bytearray, memoryview, dict, list)


class _Memo:
    """Detector results of one column's text values, while they repeat enough to pay."""

    __slots__ = ("hits", "lookups", "values")
    SIZE = 4096  # values remembered at most (then forgotten all at once)
    MAX_LEN = 256  # longer values are not remembered
    PROBE = 2048  # lookups between checks of the hit rate
    MIN_HITS = 0.25  # below this hit rate the column stops remembering

    def __init__(self) -> None:
        self.values: dict[str, str | None] = {}
        self.lookups = 0
        self.hits = 0


class RowBatch(list[tuple[object, ...]]):
    """Rows that keep the columns they were made from: a writer that works a column at a time
    (CSV) takes those instead of taking the rows apart again. Its columns hold for the batch
    as it is made; a slice or a copy is a plain list again."""

    __slots__ = ("columns",)
    columns: Sequence[Sequence[object]]


class MaskPlan:
    """How to mask the rows of one result set. Not thread-safe (counts)."""

    def __init__(
        self,
        names: Sequence[str],
        column_ops: Sequence[tuple[int, Callable[[object], object]]],
        detectors: tuple[str, ...],
        detector_strategy: str,
        hash_key: bytes,
    ) -> None:
        self.names = tuple(names)
        self.masked_columns: tuple[str, ...] = tuple(self.names[i] for i, _ in column_ops)
        self._width = len(self.names)
        self._ops = tuple(column_ops)
        masked = {i for i, _ in column_ops}
        self._detectors = detectors
        self._det_cols = (
            tuple(i for i in range(self._width) if i not in masked) if detectors else ()
        )
        self._scanner = _scanner(detectors)
        self._strategy = detector_strategy
        self._key = hash_key
        self._repl = self._scanner.replacements(detector_strategy, hash_key)
        scanner = self._scanner
        # Detectors that accept every match: (ASCII sub, sub, replacement), for _detect_row.
        self._subs = {
            name: (scanner.ascii_subs[name], scanner.subs[name], repl)
            for name, repl in self._repl.items()
            if scanner.patterns[name][1] is _accept
        }
        self._counts = [0] * self._width
        self._noop = not self._ops and not self._det_cols
        # Per detector column: repeated text values are scanned once (see _Memo).
        self._memos: list[_Memo | None] = [_Memo() for _ in range(self._width)]

    @property
    def counts(self) -> dict[str, int]:
        """Output column -> values masked so far (by column rules and detectors)."""
        out: dict[str, int] = {}
        for name, count in zip(self.names, self._counts, strict=True):
            out[name] = out.get(name, 0) + count
        return out

    @property
    def rule_columns(self) -> tuple[int, ...]:
        """The positions of the columns a column rule masks (every value changes)."""
        return tuple(i for i, _ in self._ops)

    @property
    def detector_columns(self) -> tuple[int, ...]:
        """The positions of the columns the detectors scan (a value may change)."""
        return self._det_cols

    @property
    def active(self) -> bool:
        """False when apply() can never change a row."""
        return not self._noop

    def apply(self, row: Sequence[object]) -> tuple[object, ...]:
        """Mask one row; a row nothing applies to is returned as it is."""
        if self._noop:
            return row if type(row) is tuple else tuple(row)
        if len(row) != self._width:
            raise ValueError(f"row has {len(row)} values, the result set has {self._width}")
        out: list[object] | None = None
        if self._ops:
            out = list(row)
            counts = self._counts
            for i, fn in self._ops:
                value = out[i]
                if value is not None:
                    out[i] = fn(value)
                    counts[i] += 1
        if self._det_cols:
            out = self._detect_row(row, out)
        if out is None:
            return row if type(row) is tuple else tuple(row)
        return tuple(out)

    def apply_all(self, rows: Iterable[Sequence[object]]) -> Iterator[tuple[object, ...]]:
        apply = self.apply
        return (apply(row) for row in rows)

    def apply_batch(self, rows: Sequence[Sequence[object]]) -> list[tuple[object, ...]]:
        """Mask many rows at once: equal to ``[apply(row) for row in rows]``, counts included,
        and faster with detectors: each column's text values are joined and scanned together,
        and values that only the email, SSN or private-key detector can match are masked by the
        pattern's own substitution, in C. Rows come back as tuples (equal to the rows given,
        not necessarily the same objects, when nothing was masked); where the batch was taken
        apart into columns, as a RowBatch that keeps them."""
        width = self._width
        if self._noop:
            return _tuples(rows)
        if len(rows) < 4 or not width:
            return [self.apply(row) for row in rows]
        try:
            columns: list[Sequence[object]] = list(zip(*rows, strict=True))
        except ValueError:  # rows of different widths
            columns = []
        if len(columns) != width:
            wrong = next(len(row) for row in rows if len(row) != width)
            raise ValueError(f"row has {wrong} values, the result set has {width}")
        changed = False
        counts = self._counts
        for i, fn in self._ops:
            column = columns[i]
            nulls = column.count(None)
            if isinstance(fn, Constant) and not nulls:
                columns[i] = [fn.value] * len(column)
            else:
                columns[i] = [None if value is None else fn(value) for value in column]
            counts[i] += len(column) - nulls
            changed = True
        for i in self._det_cols:
            new = self._detect_column(columns[i], i)
            if new is not None:
                columns[i] = new
                changed = True
        batch = RowBatch(zip(*columns, strict=False) if changed else _tuples(rows))
        batch.columns = columns
        return batch

    # -- detectors

    def _mask_text(self, text: str, i: int) -> str | None:
        """One text value of column ``i`` through the detectors; None when nothing was found."""
        memo = self._memos[i]
        if memo is None or len(text) > _Memo.MAX_LEN:
            return self._scanner.mask(text, self._strategy, self._key, self._repl)
        found = memo.values.get(text, _UNSEEN)
        memo.lookups += 1
        if found is not _UNSEEN:
            memo.hits += 1
            return found  # type: ignore[return-value]
        if memo.lookups >= _Memo.PROBE:
            if memo.hits < _Memo.MIN_HITS * memo.lookups:
                self._memos[i] = None  # mostly distinct values: not worth remembering
            memo.lookups = memo.hits = 0
        masked = self._scanner.mask(text, self._strategy, self._key, self._repl)
        if len(memo.values) >= _Memo.SIZE:
            memo.values.clear()
        memo.values[text] = masked
        return masked

    def _detect_value(self, value: object, i: int) -> object:
        """``value`` of column ``i`` masked by the detectors, or _UNSEEN if it stays as is."""
        kind = type(value)
        if kind is str:
            if len(value) < self._scanner.min_len:  # type: ignore[arg-type]
                return _UNSEEN
            text: str = value  # type: ignore[assignment]
        elif value is None or kind is int or kind is float or kind is bool:
            return _UNSEEN
        elif isinstance(value, str):
            text = str(value)
        elif isinstance(value, bytes | bytearray | memoryview):
            text = bytes(value).decode("utf-8", "surrogateescape")
        elif isinstance(value, dict | list):
            try:
                text = json.dumps(value, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                text = _as_text(value)
        else:
            return _UNSEEN
        try:
            masked: object = self._mask_text(text, i)
            if masked is None:
                return _UNSEEN
        except Exception:  # fail closed: a value we could not inspect is not shown
            masked = REDACTED
        if isinstance(value, bytes | bytearray | memoryview) and isinstance(masked, str):
            masked = masked.encode("utf-8", "surrogateescape")
        return masked

    def _detect_row(self, row: Sequence[object], out: list[object] | None) -> list[object] | None:
        scanner = self._scanner
        prefilter = scanner.prefilter
        minimum = scanner.min_len
        memos = self._memos
        subs = self._subs
        for i in self._det_cols:
            value = row[i]
            kind = type(value)
            if kind is str:  # the common case, inline (_Scanner.mask does the same)
                if len(value) < minimum:  # type: ignore[arg-type]
                    continue
                try:
                    if memos[i] is not None:
                        masked: object = self._mask_text(value, i)  # type: ignore[arg-type]
                        if masked is None:
                            continue
                    else:
                        candidates = prefilter(value)  # type: ignore[arg-type]
                        if not candidates:
                            continue
                        if len(candidates) == 1 and candidates[0] in subs:
                            ascii_sub, sub, repl = subs[candidates[0]]
                            masked = (ascii_sub if value.isascii() else sub)(repl, value)  # type: ignore[union-attr]
                            if masked == value:
                                continue
                        else:
                            masked = scanner.mask(
                                value,  # type: ignore[arg-type]
                                self._strategy,
                                self._key,
                                self._repl,
                                candidates,
                            )
                            if masked is None:
                                continue
                except Exception:  # fail closed: a value we could not inspect is not shown
                    masked = REDACTED
            elif value is None or kind is int or kind is float or kind is bool:
                continue
            else:
                masked = self._detect_value(value, i)
                if masked is _UNSEEN:
                    continue
            if out is None:
                out = list(row)
            out[i] = masked
            self._counts[i] += 1
        return out

    def _detect_each(self, column: Sequence[object], i: int) -> list[object] | None:
        out: list[object] | None = None
        detect = self._detect_value
        for k, value in enumerate(column):
            masked = detect(value, i)
            if masked is _UNSEEN:
                continue
            if out is None:
                out = list(column)
            out[k] = masked
            self._counts[i] += 1
        return out

    def _detect_column(self, column: Sequence[object], i: int) -> list[object] | None:
        """Column ``i`` of a batch masked by the detectors, or None when nothing was found.

        The text values are joined with NUL, which no pattern matches, and the prefilters run
        once over the joined text (_Scanner.column). Values some detector other than email may
        match go through the per-value path; in a column of email addresses the rest are
        masked by one substitution over the joined text."""
        kinds = set(map(type, column))
        nulls = type(None) in kinds
        kinds.discard(type(None))
        if not kinds:
            return None
        if kinds != {str}:
            if all(issubclass(k, _NO_TEXT) or not issubclass(k, _SCANNED) for k in kinds):
                return None  # numbers, dates, ...: not scanned
            return self._detect_each(column, i)
        if self._memos[i] is not None:  # repeated values: one at a time, remembered
            return self._detect_each(column, i)
        texts: list[str] = [value or "" for value in column]  # type: ignore[misc]
        joined = "\x00".join(texts)
        if joined.count("\x00") != len(texts) - 1:  # a value holds NUL itself
            return self._detect_each(column, i)
        full, dense = self._scanner.column(texts, joined)
        parts = texts
        if dense:
            try:
                subs = self._scanner.ascii_subs if joined.isascii() else self._scanner.subs
                result = subs["email"](self._repl["email"], joined)
            except Exception:
                return self._detect_each(column, i)
            if result is not joined and result != joined:
                parts = result.split("\x00")
                if len(parts) != len(texts):  # a replacement holding NUL: cannot happen
                    return self._detect_each(column, i)
        elif not full:
            return None
        changed = sum(map(ne, parts, texts)) if parts is not texts else 0
        out: list[object] = list(parts)
        for k in full:
            if parts[k] != texts[k]:
                changed -= 1
            value = column[k]
            masked = self._detect_value(value, i)
            if masked is _UNSEEN:
                out[k] = value
            else:
                out[k] = masked
                changed += 1
        if not changed:
            return None
        self._counts[i] += changed
        if nulls:
            for k, value in enumerate(column):
                if value is None:
                    out[k] = None
        return out


def _tuples(rows: Sequence[Sequence[object]]) -> list[tuple[object, ...]]:
    """ROWS as a list of tuples: the rows themselves where they are tuples (checked in C)."""
    if set(map(type, rows)) <= {tuple}:
        return list(rows)  # type: ignore[arg-type]
    return [row if type(row) is tuple else tuple(row) for row in rows]
