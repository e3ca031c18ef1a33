"""The page checks themselves: each one catches the problem it is there for.

A check that never fails proves nothing, so each is shown a page with the fault.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from .conftest import ROOT
from .pagecheck import (
    A11Y_JS,
    FITS_WIDTH_JS,
    TEXT_COLOURS_JS,
    contrast,
    labels_running_into_values,
    low_contrast,
)

GOOD = """<!doctype html><html lang="en"><head><title>Fine</title></head><body>
<h1>Title</h1><h2>Part</h2><label for="e">Email</label><input id="e" type="email">
<input type="hidden" name="t"><button>Send</button><img src="data:," alt="">
<a href="/x">Somewhere</a></body></html>"""


def problems(browser: Browser, html: str) -> list[str]:
    page = browser.new_page()
    try:
        page.set_content(html)
        return list(page.evaluate(A11Y_JS))
    finally:
        page.close()


def test_a_sound_page_passes(browser: Browser) -> None:
    assert problems(browser, GOOD) == []


@pytest.mark.parametrize(
    ("fault", "html", "found"),
    [
        ("no lang", GOOD.replace(' lang="en"', ""), "no lang"),
        ("no title", GOOD.replace("<title>Fine</title>", ""), "no <title>"),
        ("unlabelled field", GOOD.replace('<label for="e">Email</label>', ""), "has no label"),
        ("nameless button", GOOD.replace("<button>Send</button>", "<button></button>"),
         "has no accessible name"),
        ("image without alt", GOOD.replace(' alt=""', ""), "has no alt"),
        ("skipped heading", GOOD.replace("<h2>Part</h2>", "<h3>Part</h3>"), "skips a level"),
        ("two h1s", GOOD.replace("<h2>Part</h2>", "<h1>Part</h1>"), "2 <h1> elements"),
        ("duplicate id", GOOD.replace('<a href', '<a id="e" href'), "duplicate ids: e"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "",
)
def test_each_accessibility_fault_is_reported(browser: Browser, fault: str, html: str,
                                              found: str) -> None:
    reported = problems(browser, html)
    assert any(found in p for p in reported), (fault, reported)


def test_contrast_matches_wcag_reference_values() -> None:
    black, white = [0, 0, 0, 1], [255, 255, 255, 1]
    assert contrast(black, white) == pytest.approx(21)
    assert contrast([118, 118, 118, 1], white) == pytest.approx(4.54, abs=0.01)  # #767676


def test_pale_text_and_a_pale_button_are_caught_and_dark_text_is_not(browser: Browser) -> None:
    page = browser.new_page()
    page.set_content(
        '<body style="background:#fff"><p style="color:#999">pale</p>'
        '<p style="color:#333">dark</p>'
        '<div style="background:rgba(0,0,0,.5)"><button style="background:transparent;'
        'color:#555;border:0">dim button</button></div></body>'
    )
    poor = {p.what.split('"')[1] for p in low_contrast(page.evaluate(TEXT_COLOURS_JS))}
    page.close()
    assert poor == {"pale", "dim button"}


def test_a_page_wider_than_a_phone_is_caught(browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.set_content('<meta name="viewport" content="width=device-width">'
                     '<div style="width:600px">wide</div>')
    assert page.evaluate(FITS_WIDTH_JS) is False
    page.close()


# One row of the admin's lessons table as a card: a long label, a nowrap number, a value
# long enough to wrap. The old rule gave the label an inline-block of at least 6rem.
CARD_ROW = """<meta name="viewport" content="width=device-width">
<div class="table-wrap"><table class="funnel"><tbody><tr>
<td data-label="Lesson"><a href="/l/1">When your cheerleaders go quiet, and what then</a></td>
<td data-label="Opened, machines only" class="num">0 <span class="hint">0%</span></td>
<td data-label="Subscriber"><a href="/s/1">p1@example.com</a></td>
</tr></tbody></table></div>"""
OLD_RULE = """<style>
.table-wrap table, .table-wrap tbody, .table-wrap tr, .table-wrap td { display: block; }
.table-wrap td::before { content: attr(data-label); display: inline-block; min-width: 6rem;
  font-weight: 600; }
.funnel td.num { white-space: nowrap; }
</style>"""
NARROW_NOWRAP_COLUMN = """<style>
.table-wrap table, .table-wrap tbody, .table-wrap tr { display: block; }
.table-wrap td { display: flow-root; padding-left: 5rem; white-space: nowrap; }
.table-wrap td::before { content: attr(data-label); float: left; box-sizing: border-box;
  width: 5rem; margin-left: -5rem; padding-right: 0.5rem; }
</style>"""


def crowded_cells(browser: Browser, head: str) -> list[str]:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        page.set_content(head + CARD_ROW)
        return labels_running_into_values(page)
    finally:
        page.close()


def test_labels_running_into_their_values_at_phone_width_are_caught(browser: Browser) -> None:
    found = crowded_cells(browser, OLD_RULE)
    assert any('"Opened, machines only" runs into "0 0%"' in p for p in found), found
    assert any('"Subscriber" runs into' in p for p in found), found


def test_a_label_too_long_for_its_column_is_caught(browser: Browser) -> None:
    """A label in a column of its own that cannot wrap (a number's nowrap inherited)."""
    found = crowded_cells(browser, NARROW_NOWRAP_COLUMN)
    assert '"Opened, machines only" is wider than its label column' in found, found


def test_the_admin_stylesheet_keeps_every_label_clear_of_its_value(browser: Browser) -> None:
    css = (ROOT / "static" / "admin.css").read_text()
    assert crowded_cells(browser, f"<style>{css}</style>") == []
