"""Telling a person from a machine when an open or a click arrives: plain functions.

Mail privacy proxies, corporate link scanners and link previews fetch the open pixel and
follow links without anyone reading. Such hits are still recorded, with ``Event.machine``
set, and never count as reading. The signals, each documented below:

* the user agent contains a known proxy, scanner or preview marker (:data:`MACHINE_AGENTS`),
  or is empty, or is the bare ``Mozilla/5.0`` Apple Mail Privacy Protection sends;
* a pixel hit within ``window`` seconds of sending: no person opens that fast, but a
  proxy that prefetches on delivery does;
* a click on the hidden canary link, which no person can see (``Hit.canary``).

Apple's proxy can also use a full browser user agent from Apple's address ranges; that
is not detected here (it needs an IP list kept up to date), so some of its opens still
count as human. A click by a person always counts as a human open.
"""

from __future__ import annotations

from datetime import datetime, timedelta

# Lower-case substrings of user agents that belong to machines, not readers.
MACHINE_AGENTS: tuple[str, ...] = (
    # Mailbox providers' image proxies: they fetch images on the provider's schedule
    # (Gmail on delivery or first display, Yahoo on delivery), not the reader's.
    "googleimageproxy",  # "... (via ggpht.com GoogleImageProxy)"
    "yahoomailproxy",  # "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
    # Corporate mail security gateways that open and follow everything on arrival.
    "barracuda",
    "mimecast",
    "proofpoint",
    "symantec",
    "messagelabs",
    "trendmicro",
    "forcepoint",
    "fireeye",
    "zscaler",
    "sophos",
    "cisco ironport",
    # Link previews and Office's link checks (a person's click comes separately, from the
    # browser): "Microsoft Office Existence Discovery", "ms-office; MSOffice 16",
    # "Outlook-iOS link preview", "SkypeUriPreview", "WhatsApp", "facebookexternalhit".
    "microsoft office existence discovery",
    "microsoft office protocol discovery",
    "ms-office",
    "preview",
    "facebookexternalhit",
    "whatsapp",
    # Crawlers and HTTP libraries: "Googlebot", "bingbot", "Slackbot", "python-requests/2.32".
    "bot",
    "spider",
    "crawler",
    "headlesschrome",
    "phantomjs",
    "python-requests",
    "python-urllib",
    "python-httpx",
    "aiohttp",
    "curl",
    "wget",
    "go-http-client",
    "okhttp",
    "java/",
    "apache-httpclient",
    "libwww-perl",
    "node-fetch",
    "axios/",
)

# What Apple Mail Privacy Protection sends when it prefetches: the product token alone.
BARE_AGENTS = frozenset({"", "mozilla/5.0", "mozilla/4.0"})


def is_machine_agent(user_agent: str | None) -> bool:
    """True for an empty, bare or known proxy/scanner/preview user agent."""
    ua = (user_agent or "").strip().lower()
    if ua in BARE_AGENTS:
        return True
    ua = ua.replace("cubot", "")  # a phone maker ("CUBOT X19"), not a bot
    return any(marker in ua for marker in MACHINE_AGENTS)


def too_soon(at: datetime, sent_at: datetime | None, window_seconds: float) -> bool:
    """A hit before, or within ``window_seconds`` of, sending: a prefetch, not a reader."""
    if sent_at is None or window_seconds <= 0:
        return False
    return at < sent_at + timedelta(seconds=window_seconds)


def is_machine_open(user_agent: str | None, at: datetime, sent_at: datetime | None,
                    window_seconds: float) -> bool:
    """Whether a pixel hit came from a machine (proxy, scanner) rather than a reader."""
    return is_machine_agent(user_agent) or too_soon(at, sent_at, window_seconds)


def is_machine_click(user_agent: str | None, canary: bool) -> bool:
    """Whether a click came from a machine: the hidden canary link, or a machine's agent.

    The time since sending is not used for clicks: a reader may click at once, and a
    scanner that follows every link also follows the canary.
    """
    return canary or is_machine_agent(user_agent)
