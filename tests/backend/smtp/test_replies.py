"""Enhanced status codes on aiosmtpd's built-in replies (RFC 2034)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailmux.backend.smtp.replies import with_enhanced_code


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
        ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("250 2.1.5 Ok", "250 2.1.5 Ok"),  # already has one
        ("550 5.7.1 Relaying denied", "550 5.7.1 Relaying denied"),
        ("220 a mailmux ESMTP", "220 a mailmux ESMTP"),  # greeting: exempt
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("334 ", "334 "),
        ("250", "250 2.0.0"),
    ],
)
def test_with_enhanced_code(reply: str, expected: str) -> None:
    assert with_enhanced_code(reply) == expected


@given(
    st.sampled_from(["250", "451", "500", "501", "503", "550", "552"]),
    st.text(st.characters(categories=("L", "Zs")), max_size=30),
)
def test_code_added_once_and_basic_code_kept(code: str, text: str) -> None:
    once = with_enhanced_code(f"{code} {text}")
    assert once.startswith(code + " " + code[0] + ".")
    assert with_enhanced_code(once) == once
