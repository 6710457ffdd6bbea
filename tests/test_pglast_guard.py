"""A statement too deep for pglast is refused before it is parsed: parsing it would crash the
broker (a segmentation fault in pglast, which no exception handler catches)."""

from __future__ import annotations

import subprocess
import sys

from broker.protocols.postgres.copy_out import copy_out

CHAIN = "SELECT " + " + ".join(["1"] * 30_000)


def _in_a_process(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-"], input=code, capture_output=True, text=True, timeout=120
    )


def test_pglast_itself_crashes_on_the_chain() -> None:
    # Why the guard exists: the bare parse kills the process that runs it.
    crashed = _in_a_process(f"import pglast; pglast.parse_sql({CHAIN!r})")
    assert crashed.returncode < 0 or crashed.returncode > 128


def test_the_policy_judges_the_chain_unknown_without_crashing() -> None:
    code = (
        "from broker.policy.sql import parse_sql\n"
        f"print(parse_sql({CHAIN!r}, 'postgres').unknown)\n"
    )
    judged = _in_a_process(code)
    assert judged.returncode == 0, judged.stderr
    assert "too complex to inspect" in judged.stdout


def test_masking_resolves_the_chain_as_opaque_without_crashing() -> None:
    code = (
        "from broker.masking.lineage_pglast import column_sources_pglast\n"
        "from broker.masking_effects import analyze\n"
        f"print(column_sources_pglast({CHAIN!r}, ['x'])[0].opaque)\n"
        f"print(analyze('postgres', {CHAIN!r}).effects.code)\n"
    )
    resolved = _in_a_process(code)
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.split() == ["True", "True"]


def test_a_copy_column_list_is_read_as_column_names() -> None:
    copy = copy_out('COPY public.accounts (id, "E""mail") TO STDOUT')
    assert copy is not None
    assert copy.select == 'SELECT "id", "E""mail" FROM public.accounts'
