"""The clean stage: lossless normalisation, PII of each type redacted (and only PII), filters with reasons."""

import pytest

from oracle.data.clean import clean_document, normalise
from oracle.data.pii import iban_valid, luhn_valid, redact

PROSE = "The router sends every token to two experts, and the shared expert sees all of them. " * 2


def test_normalisation_is_nfc_and_lossless_for_cyrillic_accents_and_emoji() -> None:
    decomposed = "Cafe\u0301 Ёлка ёжик 🦊"  # e + combining acute
    assert normalise(decomposed) == "Café Ёлка ёжик 🦊"
    assert normalise("ПРИВЕТ Мир") == "ПРИВЕТ Мир"  # no lowercasing


def test_controls_and_whitespace_are_normalised() -> None:
    text = "a\x00b\u200bc\r\nline  with\t\ttabs   \r\n\n\n\n\nnext\ufeff"
    assert normalise(text) == "abc\nline with tabs\n\nnext"


@pytest.mark.parametrize(
    ("text", "kind", "placeholder"),
    [
        ("write to ivan.petrov@example.ru please", "email", "<EMAIL>"),
        ("call +7 (912) 345-67-89 now", "phone", "<PHONE>"),
        ("call 415-555-0132 now", "phone", "<PHONE>"),
        ("server 192.168.10.42 is down", "ip_address", "<IP_ADDRESS>"),
        ("server 2001:db8::8a2e:370:7334 is down", "ip_address", "<IP_ADDRESS>"),
        ("card 4111 1111 1111 1111 expired", "payment_card", "<PAYMENT_CARD>"),
        ("card 5500-0000-0000-0004 expired", "payment_card", "<PAYMENT_CARD>"),
        ("pay to DE89 3704 0044 0532 0130 00 today", "iban", "<IBAN>"),
        ("pay to GB82WEST12345698765432 today", "iban", "<IBAN>"),
        ("token ghp_" + "A1b2" * 9 + " leaked", "secret", "<SECRET>"),
        ("aws AKIAIOSFODNN7EXAMPLE leaked", "secret", "<SECRET>"),
        ("key sk-proj-" + "x" * 30 + " leaked", "secret", "<SECRET>"),
    ],
)
def test_each_pii_type_is_replaced_by_its_placeholder_and_counted(text: str, kind: str, placeholder: str) -> None:
    result = redact(text)
    assert placeholder in result.text
    assert result.counts == {kind: 1}


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "pay to DE00 3704 0044 0532 0130 00 bad checksum",
        "address 999.12.1.1 is not an IP",
        "released on 2024-05-01, invoice 123456789, pi 3.14159, scores 12 34 56 78",
        "Ёлка и ёжик: не персональные данные",
    ],
)
def test_look_alikes_that_fail_their_checks_are_kept(text: str) -> None:
    result = redact(text)
    assert result.text == text
    assert not result.counts


def test_checksums() -> None:
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB00 WEST 1234 5698 7654 32")


def test_a_good_document_is_kept_with_its_pii_counted() -> None:
    cleaned = clean_document(PROSE + " Contact: ops@oracle.invalid.")
    assert cleaned.drop_reason is None
    assert cleaned.text is not None
    assert "<EMAIL>" in cleaned.text
    assert cleaned.pii == {"email": 1}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("too short", "too_short"),
        ("#$%^&*()_+{}|:<>?~`" * 10 + " a b c d e", "low_alnum_fraction"),
        ("x " * 60, "mean_word_length"),
        ("same line here\n" * 10 + PROSE, "repeated_lines"),
        (
            "Supercalifragilisticexpialidocious" * 3 + " " + "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
            "too_few_words",
        ),
    ],
)
def test_filters_drop_with_a_reason(text: str, reason: str) -> None:
    cleaned = clean_document(text)
    assert cleaned.text is None
    assert cleaned.drop_reason == reason


def test_russian_and_code_pass_the_filters() -> None:
    russian = "Маршрутизатор отправляет каждый токен двум экспертам, а общий эксперт видит их все. " * 2
    code = (
        "def route_tokens(x_TD):\n    probs_TE = x_TD.softmax(dim=-1)\n    return probs_TE.topk(2)\n\n"
        "def count(experts_TK, n):\n    return torch.bincount(experts_TK.flatten(), minlength=n)\n"
    )
    assert clean_document(russian).text == russian.strip()
    assert clean_document(code).drop_reason is None


@pytest.mark.parametrize(
    "text",
    [
        "logged at 2023-10-15 14:30:00 and 15.10.2023 14:30",
        "a budget of 1 500 000 000 rubles",
        "id 12345678-1234-5678-1234-567812345678 and invoice 2023-000123-45",
        "f :: Int -> Int",
        "background: url(icon@2x.png)",
    ],
)
def test_dates_times_numbers_ids_and_code_are_not_pii(text: str) -> None:
    assert redact(text).text == text


def test_compact_phone_numbers_and_sentence_final_addresses_are_pii() -> None:
    assert redact("call +15551234567 now").text == "call <PHONE> now"
    assert redact("Connect to 192.168.1.1.").text == "Connect to <IP_ADDRESS>."


def test_joiners_indentation_and_nfc_after_control_removal() -> None:
    family = "👨\u200d👩\u200d👧 می\u200cخواهم"
    assert normalise(family) == family
    assert normalise("def f():\n    return  1\n\tx  = 2") == "def f():\n    return 1\n\tx = 2"
    assert normalise("cafe\u200b\u0301") == "café"
