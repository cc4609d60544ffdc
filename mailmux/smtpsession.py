"""aiosmtpd configured for mailmux's SMTP servers (gateway submission, node intake).

aiosmtpd 1.4 sets the deprecated `Session.login_data` after every successful AUTH, and that
property logs "Session.login_data is deprecated" each time, even for servers that only use the
current `auth_data` API, as mailmux does. `Session` here keeps `login_data` as the plain
attribute aiosmtpd 2.0 will drop, so nothing is logged; mailmux never reads it.
"""

from __future__ import annotations

from typing import Any

from aiosmtpd.smtp import Session as _AiosmtpdSession


class Session(_AiosmtpdSession):
    # A class attribute shadows the warning property; aiosmtpd's assignment lands on the instance.
    login_data: Any = None
