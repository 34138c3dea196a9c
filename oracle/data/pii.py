"""PII redaction: emails, phone numbers, IPv4/IPv6 addresses, payment cards (Luhn-checked), IBANs (mod-97
checked) and API keys/tokens, each replaced by a typed placeholder and counted.

Candidates come from regular expressions; the ones with a checksum or a grammar (cards, IBANs, IP addresses) must
also pass it, so order numbers, dates and times stay untouched. A four-part version string is also a valid IPv4
address and is redacted: the safe side.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass, field

from oracle_base.secrets import SECRET_TEXT

PLACEHOLDERS = {
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "ip_address": "<IP_ADDRESS>",
    "payment_card": "<PAYMENT_CARD>",
    "iban": "<IBAN>",
    "secret": "<SECRET>",
}

_SECRET = SECRET_TEXT  # the one table of secret shapes (oracle_base.secrets), shared with the publish gate
# Bounded repetitions: unbounded ones made a long run of "a.a.a." quadratic.
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}\b")
_FILE_SUFFIXES = {"png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "css", "js", "py", "json", "txt", "pdf", "zip"}
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")
# Phone numbers in the forms people write them: international with `+` (spaced or E.164), an area code in
# parentheses, or the North-American 3-3-4 grouping. Dates, times, thousands and UUID pieces do not fit these.
_PHONE = re.compile(
    r"(?<![\w+(-])(?:"
    r"\+\d{1,3}(?:[\s.-]?\(?\d{1,5}\)?)?(?:[\s.-]?\d{2,4}){2,4}"
    r"|(?:\d{1,3}[\s.-]?)?\(\d{2,5}\)[\s.-]?\d{2,4}(?:[\s.-]?\d{2,4}){1,2}"
    r"|\d{3}[-.]\d{3}[-.]\d{4}"
    r")(?![\w:-])"
)


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(candidate: str) -> bool:
    compact = candidate.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def _ip_valid(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


@dataclass
class Redaction:
    text: str
    counts: Counter[str] = field(default_factory=Counter)


def redact(text: str) -> Redaction:
    """The text with every PII match replaced by its placeholder, and the count per type."""
    counts: Counter[str] = Counter()

    def replace(kind: str, pattern: re.Pattern[str], source: str, valid: object = None) -> str:
        def substitute(match: re.Match[str]) -> str:
            value = match.group(0)
            if callable(valid) and not valid(value):
                return value
            counts[kind] += 1
            return PLACEHOLDERS[kind]

        return pattern.sub(substitute, source)

    # Most specific first, so a card number is not half-eaten as a phone number, nor a key as an email.
    text = replace("secret", _SECRET, text)
    text = replace("email", _EMAIL, text, lambda v: v.rsplit(".", 1)[-1].lower() not in _FILE_SUFFIXES)
    text = replace("iban", _IBAN, text, iban_valid)
    text = replace("payment_card", _CARD, text, lambda v: luhn_valid(re.sub(r"[ -]", "", v)))
    text = replace("ip_address", _IPV4, text, _ip_valid)
    text = replace(
        "ip_address", _IPV6, text, lambda v: v.count(":") >= 2 and re.search("[0-9A-Fa-f]", v) and _ip_valid(v)
    )
    text = replace("phone", _PHONE, text, lambda v: 9 <= sum(c.isdigit() for c in v) <= 15 and not v.isdigit())
    return Redaction(text, counts)
