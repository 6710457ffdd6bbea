"""Masking sensitive values in database results, in the broker, before anything sees them.

Two mechanisms, both configured per target (``[targets.masking]``):

* **Column rules** mask every value of an output column whose values are *derived from* a
  matching source column (``email``, ``*_ssn``, ``public.users.phone``). Which source columns
  an output column derives from is worked out once per result set from the SQL text
  (``column_sources_pglast``, ``column_sources_sqlglot``); ``Masker.plan`` turns that into
  a ``MaskPlan`` whose ``apply`` masks one row.
* **Value detectors** look inside every text value of the other columns and mask only the
  sensitive part (``"card 4111 1111 1111 1111 ok"`` -> ``"card [REDACTED:card] ok"``).
  ``MaskPlan.apply_batch`` does the same for many rows at once, faster.

Database error messages echo values (``Key (email)=(jane@example.com) already exists``):
``mask_error`` masks them. Views are followed to their base columns with the catalog lookups
of broker.masking_views.

Everything fails closed: an output column the resolver cannot explain is *opaque* and is masked
whenever a column rule could apply to it; an error while masking a value redacts the value.
See docs/masking.md for the rules, the exact detector definitions and the limits.

config            MaskingConfig, MaskColumnRule: the ``[targets.masking]`` table (pydantic)
strategies        redact, partial, hash: mask_value, and the per-plan value maskers
detectors         DETECTORS: each detector's pattern, checksum and check (luhn_ok, iban_ok)
scanner           prefilters and the scanner over a text or a column: detect, mask_text
lineage           ColumnSource and the scope model the resolvers share (relations, stars)
lineage_pglast  column_sources_pglast: a PostgreSQL statement's columns (pglast)
lineage_sqlglot   column_sources_sqlglot: a MySQL or SQLite statement's columns (sqlglot)
plans             MaskPlan: the rows of one result set masked, one at a time or in batches
error_messages    mask_error: the values database error messages echo
masker            Masker: a target's configuration compiled; plan() once per result set

The benchmark is bench/masking.py (``python -m bench.masking``).

This package's __init__ imports nothing: broker.config imports the config models alone, and
the other modules sit on the floors above it (docs/architecture.md). Import from the module.
"""
