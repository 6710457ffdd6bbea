"""Masking of database results: strategies, value detectors, plans and column lineage."""

from __future__ import annotations

import base64
import hmac
import io
import json
import os
import random
import string
import tomllib
from collections.abc import Sequence
from hashlib import sha256
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.masking import benchmark
from broker.masking import plans
from broker.masking.config import MaskingConfig
from broker.masking.detectors import DETECTORS, _canonical, _pattern, iban_ok, luhn_ok
from broker.masking.lineage import ColumnSource
from broker.masking.lineage_pglast import column_sources_pglast
from broker.masking.lineage_sqlglot import column_sources_sqlglot
from broker.masking.masker import Masker
from broker.masking.plans import MaskPlan, _Memo
from broker.masking.scanner import _Scanner, _scanner, detect, mask_text
from broker.masking.strategies import REDACTED, _as_bytes, mask_value

KEY = b"test-key"
ALL = list(DETECTORS)


def b64url(data: dict[str, object] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


JWT = (
    b64url({"alg": "HS256", "typ": "JWT"})
    + "."
    + b64url({"sub": "1234567890", "name": "Jane"})
    + ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM9Oi3nbL9Ah3Ai6c4ZNB9cQ8h8Fw9\n"
    "Zm9vYmFyYmF6cXV4Cg==\n"
    "-----END RSA PRIVATE KEY-----"
)


def kinds(text: str, detectors: Sequence[str] = ALL) -> list[str]:
    return [name for _, _, name in detect(text, detectors)]


def found(text: str, detectors: Sequence[str] = ALL) -> list[str]:
    return [text[start:end] for start, end, _ in detect(text, detectors)]


# --------------------------------------------------------------------------- configuration


def test_config_defaults_and_toml_shape() -> None:
    config = MaskingConfig.model_validate(
        {
            "detectors": ["card", "email", "card"],
            "columns": [{"match": ["email", "*_ssn"], "strategy": "partial"}],
            "hash_key": "env:MASK_KEY",
        }
    )
    assert config.detectors == ["card", "email"]  # duplicates dropped
    assert config.columns[0].strategy == "partial"
    assert config.detector_strategy == "redact"
    assert config.enabled and not config.uses_hash
    assert not MaskingConfig().enabled


@pytest.mark.parametrize(
    "data",
    [
        {"detectors": ["ssn"]},
        {"detector_strategy": "blank"},
        {"columns": [{"match": ["a.b.c.d"]}]},
        {"columns": [{"match": ["users..email"]}]},
        {"columns": [{"match": [""]}]},
        {"columns": [{"match": []}]},
        {"columns": [{"match": ["email"], "strategy": "hash", "salt": "x"}]},
        {"hash_key": "s3cr3t-literal"},
        {"unknown": True},
    ],
)
def test_config_rejects(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        MaskingConfig.model_validate(data)


def test_masker_refuses_hash_without_key() -> None:
    config = MaskingConfig.model_validate({"columns": [{"match": ["email"], "strategy": "hash"}]})
    assert config.uses_hash
    with pytest.raises(ValueError, match="hash_key"):
        Masker(config, hash_key=b"")
    Masker(MaskingConfig(detectors=["email"]), hash_key=b"")  # no hash: no key needed


def test_documented_toml_example_is_valid() -> None:
    """The example in docs/masking.md: [targets.masking] lands in the target written above."""
    text = (Path(__file__).parent.parent / "docs" / "masking.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    targets = tomllib.loads(example)["targets"]
    first = MaskingConfig.model_validate(targets[0]["masking"])
    assert [rule.strategy for rule in first.columns] == ["partial", "redact", "hash"]
    assert first.hash_key == "env:HOOP_MASKING_KEY" and first.uses_hash
    assert MaskingConfig.model_validate(targets[1]["masking"]).detectors == ["email", "phone"]


# --------------------------------------------------------------------------- strategies


def test_redact() -> None:
    assert mask_value("jane@example.com", "redact", hash_key=KEY) == REDACTED
    assert mask_value(42, "redact", hash_key=KEY) == "[REDACTED]"


@pytest.mark.parametrize("strategy", ["redact", "partial", "hash"])
def test_none_stays_none(strategy: str) -> None:
    assert mask_value(None, strategy, hash_key=KEY) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4111111111111111", "************1111"),
        ("123-45-6789", "*******6789"),
        ("12345678", "****5678"),
        ("1234567", "*******"),  # short values are masked completely
        ("abc", "***"),
        ("", ""),
        (123456789, "*****6789"),  # non-text: str() first
        (b"secret-bytes", "********ytes"),
    ],
)
def test_partial(value: object, expected: str) -> None:
    assert mask_value(value, "partial", hash_key=KEY) == expected


def test_hash_is_stable_keyed_and_short() -> None:
    first = mask_value("jane@example.com", "hash", hash_key=KEY)
    assert first == mask_value("jane@example.com", "hash", hash_key=KEY)
    assert isinstance(first, str) and first.startswith("hash:")
    assert len(first) == len("hash:") + 16
    int(first[5:], 16)
    assert first != mask_value("jane@example.com", "hash", hash_key=b"other-key")
    assert first != mask_value("john@example.com", "hash", hash_key=KEY)
    # Text and the same bytes hash alike; other types through str().
    assert mask_value(b"jane@example.com", "hash", hash_key=KEY) == first
    assert mask_value(42, "hash", hash_key=KEY) == mask_value("42", "hash", hash_key=KEY)


@pytest.mark.parametrize("key", [b"k", b"x" * 64, b"long-key" * 20])
def test_plan_hash_equals_hmac_sha256(key: bytes) -> None:
    """The plan's precomputed HMAC states give the same digest as the hmac module."""
    config = MaskingConfig.model_validate({"columns": [{"match": ["*"], "strategy": "hash"}]})
    plan = Masker(config, hash_key=key).plan([ColumnSource("c", ("t.c",))])
    for value in ("jane@example.com", "", "é", b"\x00\xff", 7, 7.0, True):
        expected = "hash:" + hmac.new(key, _as_bytes(value), sha256).hexdigest()[:16]
        assert plan.apply((value,)) == (expected,)
        assert mask_value(value, "hash", hash_key=key) == expected
    assert plan.apply((1,)) != plan.apply((True,))  # the cache keeps 1 and True apart


def test_hash_errors() -> None:
    with pytest.raises(ValueError):
        mask_value("x", "hash", hash_key=b"")
    with pytest.raises(ValueError):
        mask_value("x", "shuffle", hash_key=KEY)


# --------------------------------------------------------------------------- detectors: cards


def test_luhn_and_iban_helpers() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432")
    assert not iban_ok("GB82WEST12345698765433")


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "3782 822463 10005",  # Amex 4-6-5
        "378282246310005",
        "3056 930902 5904",  # Diners 4-6-4
        "6011111111111117",
        "4222222222222",  # 13 digits
    ],
)
def test_card_positive(card: str) -> None:
    text = f"card {card} ok"
    assert detect(text, ["card"]) == [(5, 5 + len(card), "card")]
    assert mask_text(text, ["card"]) == "card [REDACTED:card] ok"


def test_card_inside_longer_digit_groups() -> None:
    assert found("ref 12345 4111 1111 1111 1111 end", ["card"]) == ["4111 1111 1111 1111"]


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "4111111111111112",
        "1234 5678 9012 3456",  # fails Luhn
        "1700000000000",  # a millisecond timestamp: starts with 1
        "order 41111111111111111111",  # too long
        "0.4111111111111111",  # decimals
        "41 11 11 11 11 11 11 11",  # not a card layout
        "4111 1111",
    ],
)
def test_card_negative(text: str) -> None:
    assert detect(text, ["card"]) == []


def test_random_16_digit_numbers_failing_luhn_are_left_alone() -> None:
    rng = random.Random(7)
    checked = 0
    while checked < 200:
        number = str(rng.randint(2, 6)) + "".join(rng.choice(string.digits) for _ in range(15))
        if luhn_ok(number):
            continue
        checked += 1
        assert detect(f"id {number}", ["card"]) == []


def test_card_partial_strategy_keeps_last_four() -> None:
    out = mask_text("card 4111 1111 1111 1111 ok", ["card"], "partial")
    assert out == "card ***************1111 ok"


# --------------------------------------------------------------------------- detectors: others


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe+x@example.co.uk.", ["jane.doe+x@example.co.uk"]),
        ('{"to": "ops@mail.example.org"}', ["ops@mail.example.org"]),
        ("JANE_DOE@EXAMPLE.COM", ["JANE_DOE@EXAMPLE.COM"]),
        ("user@localhost", []),
        ("a@b", []),
        ("twitter @handle and foo@bar", []),
        ("price 10@3.5", []),
    ],
)
def test_email(text: str, expected: list[str]) -> None:
    assert found(text, ["email"]) == expected


@pytest.mark.parametrize(
    "phone",
    [
        "+1 (415) 555-2671",
        "+14155552671",
        "+44 20 7946 0958",
        "+44 (0)20 7946 0958",
        "+33 1 23 45 67 89",
        "415-555-2671",
        "(415) 555-2671",
        "415.555.2671",
        "1-800-555-1234",
        "020 7946 0958",
        "01 23 45 67 89",
        "030 1234567",
        "06-12345678",
    ],
)
def test_phone_positive(phone: str) -> None:
    assert found(f"call {phone} now", ["phone"]) == [phone]


@pytest.mark.parametrize(
    "text",
    [
        "year 2024",
        "id 123456789",  # a bare run of digits is never a phone
        "4155552671",
        "created 2024-01-15 10:30:00",
        "on 01.02.2024 10:30",
        "on 15/01/2024",
        "host 192.168.100.200",
        "v1.2.3",
        "order 0123 4567",  # 8 digits
        "ssn 123-45-6789",  # SSN shape
        "+1 555",
        "total 12,345,678.90",
    ],
)
def test_phone_negative(text: str) -> None:
    assert detect(text, ["phone"]) == []


@pytest.mark.parametrize(
    "iban",
    [
        "GB82 WEST 1234 5698 7654 32",
        "GB82WEST12345698765432",
        "DE89370400440532013000",
        "DE89 3704 0044 0532 0130 00",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
    ],
)
def test_iban_positive(iban: str) -> None:
    assert found(f"pay to {iban}, thanks", ["iban"]) == [iban]


def test_iban_trailing_word_is_not_part_of_it() -> None:
    assert found("DE89 3704 0044 0532 0130 00 EUR", ["iban"]) == ["DE89 3704 0044 0532 0130 00"]


@pytest.mark.parametrize(
    "text",
    [
        "GB82 WEST 1234 5698 7654 33",  # bad checksum
        "GB82WEST12345698765433",
        "DE00370400440532013000",
        "XX12",
        "ABCD1234EFGH5678IJKL",
    ],
)
def test_iban_negative(text: str) -> None:
    assert detect(text, ["iban"]) == []


def test_us_ssn() -> None:
    assert found("ssn 123-45-6789.", ["us_ssn"]) == ["123-45-6789"]
    assert found("ssn:078-05-1121", ["us_ssn"]) == ["078-05-1121"]


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",  # area 000
        "666-12-3456",  # area 666
        "912-12-3456",  # area 9xx
        "123-00-4567",  # group 00
        "123-45-0000",  # serial 0000
        "1123-45-6789",  # part of a longer number
        "123-45-67890",
        "123456789",
    ],
)
def test_us_ssn_invalid_ranges(text: str) -> None:
    assert detect(text, ["us_ssn"]) == []


def test_aws_keys() -> None:
    text = "id AKIAIOSFODNN7EXAMPLE and ASIAY34FZKBOKMUTVV7A"
    assert found(text, ["aws_key"]) == ["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A"]
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    for line in (
        f"aws_secret_access_key = {secret}",
        f"AWS_SECRET_ACCESS_KEY={secret}",
        f'{{"SecretAccessKey": "{secret}"}}',
    ):
        assert found(line, ["aws_key"]) == [secret]
        assert mask_text(line, ["aws_key"]).count("[REDACTED:aws_key]") == 1
        assert "ecret" in mask_text(line, ["aws_key"]).lower()  # the key name stays


@pytest.mark.parametrize(
    "text",
    [
        "AKIAIOSFODNN7EXAMPL",  # 15 after the prefix
        "AKIAIOSFODNN7EXAMPLEX",  # too long
        "akiaiosfodnn7example",
        "XAKIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = short",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # 40 chars, but no key name
    ],
)
def test_aws_negative(text: str) -> None:
    assert detect(text, ["aws_key"]) == []


def test_jwt() -> None:
    assert found(f"Authorization: Bearer {JWT}", ["jwt"]) == [JWT]
    unsigned = b64url({"alg": "none"}) + "." + b64url({"sub": "1"}) + "."
    assert found(f"token {unsigned} end", ["jwt"]) == [unsigned]


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3",
        "www.example.com",
        "a.b.c",
        "file.tar.gz",
        b64url({"typ": "JWT"}) + "." + b64url({"sub": "1"}) + ".c2ln",  # header without alg
        "eyJub3QganNvbg.eyJzdWIiOiIxIn0.c2ln",  # header not JSON
        JWT + ".extra",  # four parts
    ],
)
def test_jwt_negative(text: str) -> None:
    assert detect(text, ["jwt"]) == []


def test_private_key_whole_block() -> None:
    text = f"key:\n{PEM}\nafter"
    assert mask_text(text, ["private_key"]) == "key:\n[REDACTED:private_key]\nafter"
    cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE"
    assert mask_text(cut, ["private_key"]) == "[REDACTED:private_key]"
    in_json = json.dumps({"key": PEM})
    assert "MIIE" not in mask_text(in_json, ["private_key"])


@pytest.mark.parametrize(
    "text",
    [
        "-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIBIjANBg\n-----END CERTIFICATE-----",
        "the PRIVATE KEY is in the vault",
    ],
)
def test_private_key_negative(text: str) -> None:
    assert detect(text, ["private_key"]) == []


@pytest.mark.parametrize(
    "token",
    [
        "sk_live_4eC39HqLyjWDarjtT1zdp7dcXyZ9aBcD",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "dGhpcyBpcyBhIHJhbmRvbSBzZWNyZXQgdG9rZW4xMjM0NTY3OA==",
    ],
)
def test_secret_positive(token: str) -> None:
    assert found(f"token={token};", ["secret"]) == [token]


@pytest.mark.parametrize(
    "text",
    [
        "123e4567-e89b-12d3-a456-426614174000",  # UUID
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # sha256 hex
        "this_is_a_very_long_identifier_name_for_tables2",  # low entropy
        "customer_account_settings_panel_view_v2",
        "com/api/v1/users/12345/settings/notifications",  # a path
        "abcdefghijklmnopqrstuvwxyzabcdefghij",  # no digit
        "sk_live_4eC39HqLyjWDarjt",  # too short
        "The quick brown fox jumps over the lazy dog 1234567890 times.",
    ],
)
def test_secret_negative(text: str) -> None:
    assert detect(text, ["secret"]) == []


def test_detect_spans_are_exact_and_ordered() -> None:
    text = "a jane@example.com b 4111111111111111 c 123-45-6789"
    assert detect(text, ALL) == [(2, 18, "email"), (21, 37, "card"), (40, 51, "us_ssn")]


def test_only_configured_detectors_run() -> None:
    text = "jane@example.com 4111111111111111"
    assert kinds(text, ["card"]) == ["card"]
    assert kinds(text, ["email"]) == ["email"]
    assert detect(text, []) == []


def test_unknown_detector() -> None:
    with pytest.raises(ValueError, match="unknown detector"):
        detect("x", ["ssn"])


def test_overlapping_spans_are_merged() -> None:
    # The JWT is also a run of secret-like characters; one mask covers it.
    assert kinds(f"t {JWT} e", ["jwt", "secret"]) == ["jwt"]
    assert mask_text(f"t {JWT} e", ["jwt", "secret"]) == "t [REDACTED:jwt] e"


def test_detector_strategies() -> None:
    text = "mail jane@example.com now"
    assert mask_text(text, ["email"], "partial") == "mail ************.com now"
    hashed = mask_text(text, ["email"], "hash", hash_key=KEY)
    assert hashed == f"mail {mask_value('jane@example.com', 'hash', hash_key=KEY)} now"


# --------------------------------------------------------------------------- prefilters, batches

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
# Texts every detector finds something in (the positive cases above and more), in contexts.
SENSITIVE = [
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "378282246310005",
    "3056 930902 5904",
    "ref 12345 4111 1111 1111 1111 end",
    "jane.doe+x@example.co.uk",
    "JANE_DOE@EXAMPLE.COM",
    "jürgen@müller.example.de",
    "ops@mail.example.org.",
    "+1 (415) 555-2671",
    "+44 (0)20 7946 0958",
    "415.555.2671",
    "030 1234567",
    "06-12345678",
    "GB82 WEST 1234 5698 7654 32",
    "DE89370400440532013000",
    "NL91ABNA0417164300",
    "123-45-6789",
    "ssn:078-05-1121",
    "AKIAIOSFODNN7EXAMPLE",
    "ASIAY34FZKBOKMUTVV7A",
    "AKIA2345678901234567",  # only four capitals in a row
    "ASIA2345678901234567",
    "AKIAABCDEFGHIJKLMNOP",  # no digits
    "ASIAABCDEFGHIJKLMNOP",
    f"aws_secret_access_key = {SECRET}",
    f'{{"SecretAccessKey": "{SECRET}"}}',
    f"SecretAccessKey={SECRET}",  # the shortest: 56 characters
    JWT,
    b64url({"alg": "none"}) + "." + b64url({"sub": "1"}) + ".",
    PEM,
    json.dumps({"key": PEM}),
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE",
    "-----BEGIN PRIVATE KEY-----",  # the shortest: a block cut short at once
    "sk_live_4eC39HqLyjWDarjtT1zdp7dcXyZ9aBcD",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "dGhpcyBpcyBhIHJhbmRvbSBzZWNyZXQgdG9rZW4xMjM0NTY3OA==",
]
CONTEXTS = ["{}", "x {} y", "note: {}.", '{{"v": "{}"}}', "ünïcødé {} ✓", "{}\n{}", "({})"]


def oracle(text: str, detectors: Sequence[str] = ALL) -> list[tuple[int, int, str]]:
    """Every detector's pattern and check on the whole text: no prefilter."""
    scanner = _scanner(_canonical(detectors))
    return scanner.spans(text, scanner.names)


def test_prefilters_never_hide_a_finding() -> None:
    """The cheap necessary conditions in front of each detector do not miss anything its
    pattern finds: card numbers, IBANs, JWTs, AWS keys, private keys, secrets, ..."""
    checked = 0
    for value in SENSITIVE:
        for context in CONTEXTS:
            text = context.format(value, value)
            expected = oracle(text)
            assert expected, text
            assert detect(text, ALL) == expected, text
            for name in DETECTORS:
                assert detect(text, [name]) == oracle(text, [name]), (name, text)
            checked += 1
    assert checked == len(SENSITIVE) * len(CONTEXTS)


def test_prefilters_on_random_text_agree_with_the_patterns() -> None:
    rng = random.Random(11)
    pieces = [*SENSITIVE, "order 42", "a@b", "ey.x", "AKIA", "AA00", "-", " ", "é", "\x00", "Z"]
    alphabet = string.ascii_letters + string.digits + " .-+/_@()=:\n\"'é€"
    for _ in range(1500):
        parts = [
            rng.choice(pieces)
            if rng.random() < 0.3
            else "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            for _ in range(rng.randint(1, 4))
        ]
        text = "".join(parts)
        assert detect(text, ALL) == oracle(text), text


# The email pattern as it was first written: the faster patterns must find exactly the same.
EMAIL_REFERENCE = (
    r"(?<![\w.%+-])[\w.%+-]+@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[A-Za-z]{2,63}"
    r"(?![\w-]|\.[^\W_])"
)


def test_email_patterns_agree_with_the_reference() -> None:
    import re

    reference = re.compile(EMAIL_REFERENCE)
    unicode_pattern = _pattern("email")
    ascii_pattern = _pattern("email_ascii")
    rng = random.Random(5)
    labels = ["", "a", "ab", "a-b", "-a", "a-", "a_b", "x1", "com", "c0m", "de", "_", "é"]
    labels += ["a" * 64, "a" * 63, "b" * 62, "A1-b", "münchen"]
    noise = "aB0.-_@%+ x9Zé"
    for i in range(20000):
        if i % 2:
            text = "".join(rng.choice(noise) for _ in range(rng.randint(1, 30)))
        else:
            domain = rng.choice([".", "..", "."]).join(
                rng.choice(labels) for _ in range(rng.randint(1, 4))
            )
            text = (
                rng.choice(["", " ", "a", ".", "é"])
                + rng.choice(["u", "a.b", "x+y", "-", "%", "", "_", "ü"])
                + "@"
                + domain
                + rng.choice(["", ".", ".x", " ", "-", "_", ".-", "1", ".Z", "é", ".é"])
            )
        want = [m.span() for m in reference.finditer(text)]
        assert [m.span() for m in unicode_pattern.finditer(text)] == want, text
        if text.isascii():
            assert [m.span() for m in ascii_pattern.finditer(text)] == want, text


def batch_rows(rng: random.Random, count: int) -> list[tuple[object, ...]]:
    texts = [
        "order 17 shipped",
        "nothing here at all",
        "Grüße aus München",
        "with\x00nul jane@example.com",
        "",
        "short",
    ]
    rows: list[tuple[object, ...]] = []
    for i in range(count):
        email = f"user{i}@example.com" if rng.random() < 0.9 else rng.choice(texts)
        note = rng.choice(texts)
        if rng.random() < 0.3:
            note = rng.choice(CONTEXTS).format(*[rng.choice(SENSITIVE)] * 2)
        other: object = rng.choice(
            [None, 42, 4111111111111111, 1.5, True, b"ssn 123-45-6789", {"e": "a@b.io"}, "x"]
        )
        rows.append((i, email if rng.random() > 0.05 else None, note, other))
    return rows


@pytest.mark.parametrize("strategy", ["redact", "partial", "hash"])
@pytest.mark.parametrize("remember", [True, False])
def test_apply_batch_equals_apply(
    strategy: str, remember: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches (text values joined per column, C substitutions for email columns) give the
    same rows and counts as one row at a time, with and without the memo of repeated
    values."""
    monkeypatch.setattr(_Memo, "PROBE", 64)  # decide about the memo early
    rng = random.Random(3)
    rows = batch_rows(rng, 3000)
    config = {"detectors": ALL, "detector_strategy": strategy}
    columns = cols("id", "email", "note", "other")
    one, many = plan_for(config, columns), plan_for(config, columns)
    if not remember:
        one._memos = [None] * 4
        many._memos = [None] * 4
    expected = [one.apply(row) for row in rows]
    got: list[tuple[object, ...]] = []
    for at in range(0, len(rows), 500):
        got.extend(many.apply_batch(rows[at : at + 500]))
    assert got == expected
    assert many.counts == one.counts
    assert one.counts["email"] > 2000


@pytest.mark.parametrize("detectors", [ALL, *([name] for name in DETECTORS)])
def test_apply_batch_finds_every_detector_in_a_column_of_other_text(
    detectors: list[str],
) -> None:
    """Each sensitive value alone among harmless ones: the column gates point at it."""
    filler = ["order 17 shipped", "user7@example.com", "Grüße", "ok", "x" * 40]
    config = {"detectors": detectors}
    found_any = False
    for value in SENSITIVE:
        for context in CONTEXTS:
            column = [*filler, context.format(value, value), *filler]
            rows = [(text,) for text in column]
            one, many = plan_for(config, cols("t")), plan_for(config, cols("t"))
            one._memos = [None]
            many._memos = [None]
            expected = [one.apply(row) for row in rows]
            assert many.apply_batch(rows) == expected, value
            assert many.counts == one.counts
            found_any = found_any or expected[len(filler)] != rows[len(filler)]
    assert found_any


def test_apply_batch_with_column_rules_and_edge_cases() -> None:
    plan = plan_for({"columns": [{"match": ["email"]}], "detectors": ALL}, cols("email", "note"))
    rows = [("a@b.io", "card 4111 1111 1111 1111"), (None, None), ("x", "fine"), ("y", "ok")]
    assert plan.apply_batch(rows) == [
        (REDACTED, "card [REDACTED:card]"),
        (None, None),
        (REDACTED, "fine"),
        (REDACTED, "ok"),
    ]
    assert plan.counts == {"email": 3, "note": 1}
    assert plan.apply_batch([]) == []
    with pytest.raises(ValueError, match="values"):
        plan.apply_batch([("a", "b")] * 5 + [("a",)])
    with pytest.raises(ValueError, match="row has 3 values"):
        plan.apply_batch([("a", "b", "c")] * 5)  # all alike, and all too wide
    quiet = plan_for({"detectors": ALL}, cols("n", "t"))
    rows = [(i, "nothing to see") for i in range(10)]
    assert quiet.apply_batch(rows) == rows
    assert plan_for({}, cols("a")).apply_batch([["x"]]) == [("x",)]


def test_memo_remembers_repeated_values_and_gives_up_on_distinct_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_Memo, "PROBE", 100)
    plan = plan_for({"detectors": ALL}, cols("status", "email"))
    for i in range(300):
        row = ("pending review", f"user{i}@example.com")
        assert plan.apply(row) == ("pending review", "[REDACTED:email]")
    assert plan._memos[0] is not None  # repeated: remembered
    assert plan._memos[1] is None  # distinct: not worth it
    assert plan.counts == {"status": 0, "email": 300}


# --------------------------------------------------------------------------- plans


def plan_for(
    config: MaskingConfig | dict[str, object], columns: Sequence[ColumnSource]
) -> MaskPlan:
    if isinstance(config, dict):
        config = MaskingConfig.model_validate(config)
    return Masker(config, hash_key=KEY).plan(columns)


def cols(*names: str, table: str = "public.users") -> list[ColumnSource]:
    return [ColumnSource(n, (f"{table}.{n}",)) for n in names]


def test_fast_path_returns_the_row_itself() -> None:
    plan = plan_for({}, cols("id", "email"))
    row = (1, "jane@example.com")
    assert plan.apply(row) is row
    assert plan.apply([1, "x"]) == (1, "x")
    assert plan.masked_columns == ()
    assert not plan.active


def test_row_without_hits_is_returned_as_is() -> None:
    plan = plan_for({"detectors": ALL}, cols("id", "note"))
    row = (1, "nothing to see here")
    assert plan.apply(row) is row
    assert plan.counts == {"id": 0, "note": 0}


def test_column_rules_strategies_and_counts() -> None:
    plan = plan_for(
        {
            "columns": [
                {"match": ["email"]},
                {"match": ["*_ssn"], "strategy": "partial"},
                {"match": ["card*"], "strategy": "hash"},
            ]
        },
        cols("id", "email", "tax_ssn", "card_number", "name"),
    )
    assert plan.masked_columns == ("email", "tax_ssn", "card_number")
    rows = [
        (1, "jane@example.com", "123-45-6789", "4111111111111111", "Jane"),
        (2, None, "987-65-4321", None, "John"),
        (3, "bob@example.com", None, "5555555555554444", "Bob"),
    ]
    out = [plan.apply(r) for r in rows]
    assert out[0][:3] == (1, REDACTED, "*******6789")
    assert out[0][3] == mask_value("4111111111111111", "hash", hash_key=KEY)
    assert out[0][4] == "Jane"  # unrelated column untouched
    assert out[1][1] is None and out[1][3] is None  # None stays None and is not counted
    assert plan.counts == {"id": 0, "email": 2, "tax_ssn": 2, "card_number": 2, "name": 0}


def test_rules_are_case_insensitive_and_qualified() -> None:
    config = {"columns": [{"match": ["Users.EMAIL"]}]}
    sources = [
        ColumnSource("a", ("public.users.email",)),
        ColumnSource("b", ("orders.email",)),
        ColumnSource("c", ("email",)),  # table unknown: could be users (fail closed)
        ColumnSource("d", ("users.name",)),
    ]
    assert plan_for(config, sources).masked_columns == ("a", "c")
    config = {"columns": [{"match": ["public.users.email"]}]}
    sources = [
        ColumnSource("a", ("public.users.email",)),
        ColumnSource("b", ("audit.users.email",)),
        ColumnSource("c", ("users.email",)),  # schema unknown: could be public
    ]
    assert plan_for(config, sources).masked_columns == ("a", "c")


def test_column_derived_from_several_sources() -> None:
    plan = plan_for(
        {"columns": [{"match": ["email"]}]},
        [ColumnSource("contact", ("users.name", "users.email"))],
    )
    assert plan.apply(("Jane <jane@example.com>",)) == (REDACTED,)


def test_unresolved_name_falls_back_to_the_output_name() -> None:
    plan = plan_for({"columns": [{"match": ["email"]}]}, [ColumnSource("email", ())])
    assert plan.masked_columns == ("email",)


def test_opaque_columns_fail_closed() -> None:
    config = {"columns": [{"match": ["orders.card"], "strategy": "partial"}, {"match": ["email"]}]}
    sources = [
        ColumnSource("anything", (), opaque=True),  # could be anything: masked
        ColumnSource("row", ("users.*",), opaque=True),  # users may have an email column
        ColumnSource("items", ("items.*",), opaque=True),  # could have an email column
    ]
    assert plan_for(config, sources).masked_columns == ("anything", "row", "items")
    narrow = {"columns": [{"match": ["orders.card"]}]}
    assert plan_for(narrow, sources).masked_columns == ("anything",)


def test_strongest_strategy_wins() -> None:
    config = {
        "columns": [
            {"match": ["email"], "strategy": "partial"},
            {"match": ["users.*"], "strategy": "hash"},
        ]
    }
    plan = plan_for(config, cols("email", "name", table="users"))
    assert plan.apply(("jane@example.com", "Jane")) == (
        mask_value("jane@example.com", "hash", hash_key=KEY),
        mask_value("Jane", "hash", hash_key=KEY),
    )
    config["columns"].append({"match": ["*"]})  # type: ignore[attr-defined]
    assert plan_for(config, cols("email", table="users")).apply(("x@y.io",)) == (REDACTED,)


def test_detectors_mask_inside_other_columns() -> None:
    plan = plan_for(
        {"columns": [{"match": ["email"]}], "detectors": ALL},
        cols("id", "email", "note", "blob", "doc"),
    )
    row = (
        7,
        "jane@example.com",
        "paid with 4111 1111 1111 1111, call +1 415 555 2671",
        b"ssn 123-45-6789",
        {"user": {"email": "bob@example.com", "age": 42}},
    )
    out = plan.apply(row)
    assert out[0] == 7
    assert out[1] == REDACTED  # by the column rule; detectors do not see it
    assert out[2] == "paid with [REDACTED:card], call [REDACTED:phone]"
    assert out[3] == b"ssn [REDACTED:us_ssn]"  # bytes stay bytes
    assert out[4] == '{"user": {"email": "[REDACTED:email]", "age": 42}}'  # JSON -> text
    assert plan.counts == {"id": 0, "email": 1, "note": 1, "blob": 1, "doc": 1}
    clean = {"user": {"age": 42}}
    assert plan.apply((1, None, "fine", b"fine", clean))[4] is clean


def test_detectors_skip_non_text_values() -> None:
    plan = plan_for({"detectors": ["card"]}, cols("n", "f"))
    row = (4111111111111111, 4111111111111111.0)
    assert plan.apply(row) is row


def test_a_value_that_cannot_be_inspected_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(text: str, m: object) -> tuple[int, int] | None:
        raise RuntimeError("bug")

    scanner = _Scanner(("email",))
    scanner.patterns["email"] = (scanner.patterns["email"][0], boom)
    monkeypatch.setattr(plans, "_scanner", lambda names: scanner)
    plan = plan_for({"detectors": ["email"]}, cols("note"))
    assert plan.apply(("mail jane@example.com",)) == (REDACTED,)
    assert plan.counts == {"note": 1}


def test_row_width_mismatch() -> None:
    plan = plan_for({"columns": [{"match": ["email"]}]}, cols("id", "email"))
    with pytest.raises(ValueError, match="values"):
        plan.apply((1,))


def test_hash_column_is_consistent_within_and_across_plans() -> None:
    config = {"columns": [{"match": ["email"], "strategy": "hash"}]}
    first = plan_for(config, cols("email"))
    second = plan_for(config, cols("email"))
    a = first.apply(("jane@example.com",))
    assert first.apply(("jane@example.com",)) == a == second.apply(("jane@example.com",))
    other = Masker(MaskingConfig.model_validate(config), hash_key=b"k2").plan(cols("email"))
    assert other.apply(("jane@example.com",)) != a


# --------------------------------------------------------------------------- PostgreSQL lineage

TABLES = {
    "users": ["id", "name", "email"],
    "public.users": ["id", "name", "email"],
    "orders": ["id", "user_id", "total"],
}


def catalog(table: str) -> list[str]:
    return TABLES.get(table, [])


EMAIL_RULE = MaskingConfig.model_validate({"columns": [{"match": ["users.email"]}]})
ROW = ("jane@example.com",)


def masked(sources: list[ColumnSource]) -> set[str]:
    return set(Masker(EMAIL_RULE, hash_key=KEY).plan(sources).masked_columns)


PG_EMAIL_QUERIES = [
    ("alias", "SELECT u.email AS contact, u.id FROM users u", ["contact", "id"]),
    ("cast", "SELECT email::text AS e, CAST(id AS text) AS id FROM public.users", ["e", "id"]),
    ("concat op", "SELECT name || ' <' || email || '>' AS c, id FROM users", ["c", "id"]),
    ("substr", "SELECT substr(email, 1, 3) AS s, id FROM users", ["s", "id"]),
    ("upper", "SELECT upper(u.email) AS up, u.id FROM users AS u", ["up", "id"]),
    ("functions", "SELECT concat(coalesce(email, ''), '!') AS x, id FROM users", ["x", "id"]),
    ("case", "SELECT CASE WHEN id > 1 THEN email ELSE '-' END AS c, id FROM users", ["c", "id"]),
    (
        "scalar subquery",
        "SELECT (SELECT u.email FROM users u WHERE u.id = o.user_id) AS e, o.id FROM orders o",
        ["e", "id"],
    ),
    ("cte", "WITH c AS (SELECT id, email AS m FROM users) SELECT m, id FROM c", ["m", "id"]),
    (
        "cte column list",
        "WITH c(i, x) AS (SELECT id, email FROM users) SELECT c.x, c.i AS id FROM c",
        ["x", "id"],
    ),
    (
        "nested ctes",
        "WITH a AS (SELECT id, email FROM users), b AS (SELECT id, lower(email) AS e FROM a) "
        "SELECT e, id FROM b",
        ["e", "id"],
    ),
    (
        "derived table",
        "SELECT d.m, d.id FROM (SELECT id, email AS m FROM users) AS d",
        ["m", "id"],
    ),
    ("select star", "SELECT * FROM users", ["id", "name", "email"]),
    (
        "t.star",
        "SELECT o.id, u.* FROM orders o JOIN users u ON u.id = o.user_id",
        ["id", "id", "name", "email"],
    ),
    ("row_to_json", "SELECT row_to_json(u) AS j, u.id FROM users u", ["j", "id"]),
    ("json_agg", "SELECT json_agg(u) AS j, count(*) AS id FROM users u", ["j", "id"]),
    ("to_jsonb", "SELECT to_jsonb(u) AS j, u.id FROM users u", ["j", "id"]),
    ("to_jsonb star", "SELECT to_jsonb(u.*) AS j, u.id FROM users u", ["j", "id"]),
    (
        "jsonb_build_object",
        "SELECT jsonb_build_object('who', u.email) AS j, u.id FROM users u",
        ["j", "id"],
    ),
    ("whole row", "SELECT u AS j, u.id FROM users u", ["j", "id"]),
    ("field of row", "SELECT (u).email AS j, u.id FROM users u", ["j", "id"]),
    (
        "union",
        "SELECT email AS j, id FROM users UNION ALL SELECT 'x', id FROM orders",
        ["j", "id"],
    ),
    (
        "recursive cte",
        "WITH RECURSIVE r(n, j) AS (SELECT 1, email FROM users UNION ALL "
        "SELECT n + 1, j FROM r WHERE n < 3) SELECT j, n AS id FROM r",
        ["j", "id"],
    ),
    (
        "lateral",
        "SELECT x.j, u.id FROM users u, LATERAL (SELECT u.email AS j) x",
        ["j", "id"],
    ),
    (
        "array subquery",
        "SELECT ARRAY(SELECT email FROM users) AS j, 1 AS id",
        ["j", "id"],
    ),
    ("returning", "UPDATE users SET name = 'x' WHERE id = 1 RETURNING email AS j, id", ["j", "id"]),
    ("string_agg", "SELECT string_agg(email, ',') AS j, max(id) AS id FROM users", ["j", "id"]),
    ("window", "SELECT first_value(email) OVER (ORDER BY id) AS j, id FROM users", ["j", "id"]),
]


@pytest.mark.parametrize("with_catalog", [True, False], ids=["catalog", "no-catalog"])
@pytest.mark.parametrize(("label", "sql", "names"), PG_EMAIL_QUERIES, ids=lambda v: str(v))
def test_postgres_lineage_masks_email(
    label: str, sql: str, names: list[str], with_catalog: bool
) -> None:
    sources = column_sources_pglast(sql, names, catalog if with_catalog else None)
    assert [s.name for s in sources] == names
    hit = {s.name for s in sources if s.name not in ("id", "name")}
    assert masked(sources) >= hit, sources
    # Unrelated columns (ids) are not masked.
    for source in sources:
        if source.name == "id":
            assert source.name not in masked([source]), source
    plan = Masker(EMAIL_RULE, hash_key=KEY).plan(sources)
    row = tuple("jane@example.com" if n not in ("id", "name") else 1 for n in names)
    out = plan.apply(row)
    for name, value in zip(names, out, strict=True):
        assert (value == REDACTED) == (name not in ("id", "name")), (name, value, sources)


def test_postgres_star_with_catalog_resolves_exactly() -> None:
    sources = column_sources_pglast("SELECT * FROM users", ["id", "name", "email"], catalog)
    assert sources == [
        ColumnSource("id", ("users.id",)),
        ColumnSource("name", ("users.name",)),
        ColumnSource("email", ("users.email",)),
    ]


def test_postgres_whole_row_without_catalog_is_opaque() -> None:
    (source,) = column_sources_pglast("SELECT row_to_json(u) FROM users u", ["row_to_json"])
    assert source.opaque and "users.*" in source.sources
    (source,) = column_sources_pglast(
        "SELECT row_to_json(u) FROM users u", ["row_to_json"], catalog
    )
    assert not source.opaque
    assert set(source.sources) == {"users.id", "users.name", "users.email"}


def test_postgres_unrelated_columns() -> None:
    sources = column_sources_pglast(
        "SELECT u.id, upper(u.name) AS n, o.total FROM users u JOIN orders o ON o.user_id = u.id "
        "WHERE u.email LIKE 'a%'",
        ["id", "n", "total"],
        catalog,
    )
    assert [s.sources for s in sources] == [("users.id",), ("users.name",), ("orders.total",)]
    assert masked(sources) == set()


def test_postgres_join_using_star() -> None:
    sources = column_sources_pglast(
        "SELECT * FROM users JOIN orders USING (id)",
        ["id", "name", "email", "user_id", "total"],
        catalog,
    )
    assert sources[0].sources == ("orders.id", "users.id")
    assert sources[2].sources == ("users.email",)
    assert masked(sources) == {"email"}


def test_postgres_views_hook() -> None:
    def views(name: str) -> dict[str, tuple[str, ...]]:
        return {"contact": ("public.users.email",)} if name == "v_people" else {}

    sql = "SELECT contact, id FROM v_people"
    plain = column_sources_pglast(sql, ["contact", "id"])
    assert plain[0].sources == ("v_people.contact",)  # masked by the view's own name only
    assert masked(plain) == set()
    expanded = column_sources_pglast(sql, ["contact", "id"], view_sources=views)
    assert "public.users.email" in expanded[0].sources
    assert masked(expanded) == {"contact"}


@pytest.mark.parametrize(
    ("sql", "names"),
    [
        ("SELECT my_lookup(id) AS m FROM orders", ["m"]),  # user function: could read anything
        ("SELECT * FROM my_report()", ["a", "b"]),
        ("SELECT query_to_xml('select * from users', true, true, '')", ["x"]),
        ("SELECT FROM WHERE", ["x"]),  # parse error
        ("SELECT 1; SELECT 2", ["x"]),  # not a single statement
        ("FETCH 10 FROM c", ["x"]),
        ("SELECT * INTO t2 FROM users", ["x"]),
    ],
)
def test_postgres_unresolvable_is_opaque(sql: str, names: list[str]) -> None:
    sources = column_sources_pglast(sql, names, catalog)
    assert all(s.opaque and not s.sources for s in sources)
    assert masked(sources) == set(names)  # fail closed: masked when any rule exists


def test_postgres_pure_set_returning_function_is_not_opaque() -> None:
    sources = column_sources_pglast(
        "SELECT g, u.id FROM users u, generate_series(1, 3) AS g", ["g", "id"], catalog
    )
    assert not sources[0].opaque
    assert masked(sources) == set()
    sources = column_sources_pglast(
        "SELECT e.value FROM users u, jsonb_array_elements(to_jsonb(u.email)) e",
        ["value"],
        catalog,
    )
    assert sources[0].sources == ("users.email",)


def test_postgres_explain_is_not_data() -> None:
    (source,) = column_sources_pglast("EXPLAIN SELECT email FROM users", ["QUERY PLAN"])
    assert source == ColumnSource("QUERY PLAN", ())


def test_postgres_stale_catalog_fails_closed() -> None:
    sources = column_sources_pglast("SELECT * FROM users", ["id", "name", "email", "new"], catalog)
    assert all(s.opaque for s in sources)
    assert masked(sources) == {"id", "name", "email", "new"}


def test_postgres_unknown_table_width_aligns_by_name() -> None:
    sources = column_sources_pglast(
        "SELECT o.id, t.*, o.total FROM orders o, things t",
        ["id", "email", "colour", "total"],
        catalog,
    )
    assert [s.sources for s in sources] == [
        ("orders.id",),
        ("things.email",),
        ("things.colour",),
        ("orders.total",),
    ]


# --------------------------------------------------------------------------- MySQL / SQLite lineage

GLOT_EMAIL_QUERIES = [
    ("alias", "SELECT u.email AS contact, u.id FROM users u", ["contact", "id"]),
    ("cast", "SELECT CAST(email AS CHAR) AS e, id FROM users", ["e", "id"]),
    ("concat", "SELECT concat(name, email) AS c, id FROM users", ["c", "id"]),
    ("substr", "SELECT substr(email, 1, 3) AS s, id FROM users", ["s", "id"]),
    ("upper", "SELECT upper(u.email) AS up, u.id FROM users AS u", ["up", "id"]),
    ("case", "SELECT CASE WHEN id > 1 THEN email ELSE '-' END AS c, id FROM users", ["c", "id"]),
    ("ifnull", "SELECT ifnull(email, '') AS c, id FROM users", ["c", "id"]),
    (
        "scalar subquery",
        "SELECT (SELECT u.email FROM users u WHERE u.id = o.user_id) AS e, o.id FROM orders o",
        ["e", "id"],
    ),
    ("cte", "WITH c AS (SELECT id, email AS m FROM users) SELECT m, id FROM c", ["m", "id"]),
    ("derived", "SELECT d.m, d.id FROM (SELECT id, email AS m FROM users) AS d", ["m", "id"]),
    ("star", "SELECT * FROM users", ["id", "name", "email"]),
    (
        "t.star",
        "SELECT o.id, u.* FROM orders o JOIN users u ON u.id = o.user_id",
        ["id", "id", "name", "email"],
    ),
    ("json_object", "SELECT json_object('e', email) AS j, id FROM users", ["j", "id"]),
    ("group_concat", "SELECT group_concat(email) AS j, max(id) AS id FROM users", ["j", "id"]),
    ("union", "SELECT email AS j, id FROM users UNION SELECT 'x', id FROM orders", ["j", "id"]),
]


@pytest.mark.parametrize("dialect", ["mysql", "sqlite"])
@pytest.mark.parametrize("with_catalog", [True, False], ids=["catalog", "no-catalog"])
@pytest.mark.parametrize(("label", "sql", "names"), GLOT_EMAIL_QUERIES, ids=lambda v: str(v))
def test_sqlglot_lineage_masks_email(
    label: str, sql: str, names: list[str], with_catalog: bool, dialect: str
) -> None:
    sources = column_sources_sqlglot(sql, dialect, names, catalog if with_catalog else None)
    plan = Masker(EMAIL_RULE, hash_key=KEY).plan(sources)
    row = tuple("jane@example.com" if n not in ("id", "name") else 1 for n in names)
    out = plan.apply(row)
    for name, value in zip(names, out, strict=True):
        assert (value == REDACTED) == (name not in ("id", "name")), (name, value, sources)


def test_sqlite_table_function_derives_from_its_arguments() -> None:
    sources = column_sources_sqlglot(
        "SELECT j.value FROM users u, json_each(u.email) j", "sqlite", ["value"]
    )
    assert sources[0].sources == ("users.email",)


@pytest.mark.parametrize(
    ("sql", "dialect"),
    [
        ("SELECT my_udf(id) AS x FROM users", "mysql"),
        ("SELECT load_file('/etc/passwd') AS x", "mysql"),
        ("SELECT FROM", "sqlite"),
        ("SELECT 1; SELECT 2", "sqlite"),
    ],
)
def test_sqlglot_unresolvable_is_opaque(sql: str, dialect: str) -> None:
    sources = column_sources_sqlglot(sql, dialect, ["x"], catalog)
    assert sources == [ColumnSource("x", (), True)]


# --------------------------------------------------------------------------- benchmark


def test_benchmark_prints_rows_per_second() -> None:
    """Not a timing assertion: prints figures. MASKING_BENCH_ROWS=1000000 for the real run
    (or `python -m bench.masking`)."""
    rows = int(os.environ.get("MASKING_BENCH_ROWS", "20000"))
    out = io.StringIO()
    results = benchmark(rows, out=out)
    print(out.getvalue())
    assert len(results) == 14 and all(rate > 0 for rate in results.values())
    assert "rows/s" in out.getvalue()
