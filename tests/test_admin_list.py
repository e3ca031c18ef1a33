"""The admin's subscribers list: search by email and name, filters, sort orders, pages
continued from a row (keyset pagination), capped totals, and input that never breaks it."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from test_admin import EMAIL, PASSWORD, add_admin, add_subscriber, listed_ids, post_login

from course.admin import queries, views
from course.content import current_course
from course.extensions import db
from course.models import Status, Subscriber
from course.timeutil import utcnow

NEXT_RE = re.compile(r'<a rel="next" href="([^"]+)"')
PREV_RE = re.compile(r'<a rel="prev" href="([^"]+)"')


def signed_in(app: Flask) -> FlaskClient:
    add_admin(app)
    client = app.test_client()
    assert post_login(client, EMAIL, PASSWORD).status_code == 302
    return client


@pytest.fixture
def small_pages(make_app: Any) -> tuple[Flask, FlaskClient]:
    app = make_app(ADMIN_PAGE_SIZE=3)
    return app, signed_in(app)


def add_people(app: Flask, rows: list[dict[str, Any]]) -> list[int]:
    """Subscribers joined a minute apart, in the order given (the last is the newest)."""
    start = utcnow() - timedelta(days=1)
    with app.app_context():
        subs = [Subscriber(**{"timezone": "UTC", "status": Status.ACTIVE,
                              "created_at": start + timedelta(minutes=i), **row})
                for i, row in enumerate(rows)]
        db.session.add_all(subs)
        db.session.commit()
        return [s.id for s in subs]


def html_of(client: FlaskClient, url: str) -> str:
    resp = client.get(url)
    assert resp.status_code == 200, url
    return resp.get_data(as_text=True)


def link(pattern: re.Pattern[str], html: str) -> str | None:
    m = pattern.search(html)
    return m.group(1).replace("&amp;", "&") if m else None


def walk(client: FlaskClient, url: str) -> list[list[int]]:
    """Every page, following "Next" from ``url``."""
    pages: list[list[int]] = []
    next_url: str | None = url
    while next_url:
        html = html_of(client, next_url)
        pages.append(listed_ids(html))
        next_url = link(NEXT_RE, html)
        assert len(pages) < 50, "the pages never end"
    return pages


# --- search -----------------------------------------------------------------------------


def test_search_finds_part_of_the_email_or_the_name_in_any_case(app):
    client = signed_in(app)
    ann, bob, _, dora = add_people(app, [
        {"email": "ann@example.com", "name": "Ann Smithson"},
        {"email": "bob.smith@example.org", "name": "Bob"},
        {"email": "carol@example.com", "name": "Carol Jones"},
        {"email": "dora@example.net", "name": "Dóra Kovács"},
    ])
    assert sorted(listed_ids(html_of(client, "/admin/subscribers?q=SMITH"))) == [ann, bob]
    assert listed_ids(html_of(client, "/admin/subscribers?q=n+smiths")) == [ann]
    assert listed_ids(html_of(client, "/admin/subscribers?q=ob.sm")) == [bob]
    assert listed_ids(html_of(client, "/admin/subscribers?q=kovács")) == [dora]
    html = html_of(client, "/admin/subscribers?q=smith")
    assert "2 subscribers match." in html
    assert 'value="smith"' in html  # the box keeps what was typed


def test_the_search_copy_follows_every_change_of_email_and_name(app):
    """Search reads ``subscriber_search``, which only the database's triggers write: a new
    subscriber, a changed name or address (an erase, say) and a deleted one all show."""
    client = signed_in(app)
    [ann] = add_people(app, [{"email": "ann@example.com", "name": "Ann Smithson"}])
    assert listed_ids(html_of(client, "/admin/subscribers?q=smithson")) == [ann]
    with app.app_context():
        sub = db.session.get(Subscriber, ann)
        sub.name, sub.email = "Ann Weller", "ann.weller@example.org"
        db.session.commit()
    assert listed_ids(html_of(client, "/admin/subscribers?q=smithson")) == []
    assert listed_ids(html_of(client, "/admin/subscribers?q=weller")) == [ann]
    with app.app_context():  # sending updates other columns: the copy is left alone
        db.session.execute(text("UPDATE subscriber SET next_position = 3 WHERE id = :i"),
                           {"i": ann})
        db.session.execute(text("UPDATE subscriber_search SET name = 'untouched' "
                                "WHERE subscriber_id = :i"), {"i": ann})
        db.session.execute(text("UPDATE subscriber SET status = 'paused', next_position = 4 "
                                "WHERE id = :i"), {"i": ann})
        assert db.session.execute(text("SELECT name FROM subscriber_search")).scalar() == (
            "untouched")
        db.session.rollback()
    with app.app_context():
        db.session.delete(db.session.get(Subscriber, ann))
        db.session.commit()
        assert db.session.execute(text("SELECT count(*) FROM subscriber_search")).scalar() == 0


def test_a_search_of_fewer_than_three_characters_asks_for_more(app):
    client = signed_in(app)
    add_people(app, [{"email": "ab@example.com", "name": "Ab"}])
    html = html_of(client, "/admin/subscribers?q=ab")
    assert listed_ids(html) == []
    assert "Type at least 3 characters" in html


# --- filters ----------------------------------------------------------------------------


def test_the_lesson_filter_lists_subscribers_whose_next_lesson_it_is(app):
    client = signed_in(app)
    with app.app_context():
        length = current_course().length
    second, third, done = add_people(app, [
        {"email": "two@example.com", "next_position": 2},
        {"email": "three@example.com", "next_position": 3, "status": Status.PAUSED},
        {"email": "done@example.com", "next_position": length + 1, "status": Status.FINISHED},
    ])
    assert listed_ids(html_of(client, "/admin/subscribers?lesson=2")) == [second]
    assert listed_ids(html_of(client, f"/admin/subscribers?lesson={length + 1}")) == [done]
    assert listed_ids(html_of(client, "/admin/subscribers?lesson=3&status=paused")) == [third]
    assert listed_ids(html_of(client, "/admin/subscribers?lesson=3&status=active")) == []
    html = html_of(client, "/admin/subscribers?lesson=3")
    assert '<option value="3" selected>' in html
    assert "The lesson they get next" in html


@pytest.mark.parametrize("query", [
    "lesson=0", "lesson=-1", "lesson=999", "lesson=abc", "lesson=2.5", "lesson=%EF%BC%92",
    "status=nonsense", "status=%3Cscript%3E", "sort=DROP%20TABLE", "sort=",
    "after=abc", "after=0", "after=99999999999999999999", "before=-3", "page=abc",
    "page=0", "page=1e9", "page=99999999999999999999", "q=%00%00x", "q=%00",
    "q=" + "x" * 2000, "after=1&before=2",
])
def test_unknown_or_malformed_arguments_fall_back_to_defaults(app, query):
    client = signed_in(app)
    ids = add_people(app, [{"email": f"p{i}@example.com"} for i in range(3)])
    resp = client.get(f"/admin/subscribers?{query}")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "<script>" not in html
    if query.startswith(("lesson=", "status=", "sort=", "after=abc", "after=0",
                         "after=999", "before=", "page=abc", "page=0")):
        assert listed_ids(html) == list(reversed(ids))  # everyone, newest first


# --- sort orders and pages --------------------------------------------------------------


PEOPLE = [  # joined in this order; next lesson; email
    ("delta@example.com", 3), ("alpha@example.com", 1), ("echo@example.com", 5),
    ("charlie@example.com", 3), ("bravo@example.com", 2), ("foxtrot@example.com", 3),
    ("golf@example.com", 1),
]


@pytest.mark.parametrize("sort, expected", [
    ("", lambda p: [i for i, _, _ in reversed(p)]),
    ("newest", lambda p: [i for i, _, _ in reversed(p)]),
    ("oldest", lambda p: [i for i, _, _ in p]),
    ("email", lambda p: [i for i, _, _ in sorted(p, key=lambda r: r[1])]),
    ("progress", lambda p: [i for i, _, _ in sorted(p, key=lambda r: (r[2], r[0]),
                                                       reverse=True)]),
    ("progress_asc", lambda p: [i for i, _, _ in sorted(p, key=lambda r: (r[2], r[0]))]),
    ("bogus", lambda p: [i for i, _, _ in reversed(p)]),
])
def test_every_sort_order_pages_through_everyone_once_both_ways(small_pages, sort, expected):
    app, client = small_pages
    ids = add_people(app, [{"email": e, "next_position": n} for e, n in PEOPLE])
    people = [(i, e, n) for i, (e, n) in zip(ids, PEOPLE, strict=True)]
    want = expected(people)
    first = "/admin/subscribers" + (f"?sort={sort}" if sort else "")
    pages = walk(client, first)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sum(pages, []) == want
    # ... and "Previous" from the last page gives back the same pages, in reverse.
    html = html_of(client, first)
    url = link(NEXT_RE, html)
    assert url and (sort in ("", "newest", "bogus") or f"sort={sort}" in url)
    last_html = html_of(client, link(NEXT_RE, html_of(client, url)) or "")
    assert "Page 3 of 3" in last_html
    back = html_of(client, link(PREV_RE, last_html) or "")
    assert listed_ids(back) == pages[1] and "Page 2 of 3" in back
    front = html_of(client, link(PREV_RE, back) or "")
    assert listed_ids(front) == pages[0] and link(PREV_RE, front) is None


def test_pages_keep_the_search_filters_and_order(small_pages):
    app, client = small_pages
    add_people(app, [{"email": f"{n}{i}@example.com", "next_position": 2}
                     for i in range(5) for n in ("keep", "drop")])
    pages = walk(client, "/admin/subscribers?q=keep&lesson=2&sort=email")
    emails = []
    with app.app_context():
        for page in pages:
            emails += [db.session.get(Subscriber, i).email for i in page]
    assert emails == [f"keep{i}@example.com" for i in range(5)]


def test_a_page_past_the_end_is_empty_with_a_way_back(small_pages):
    app, client = small_pages
    ids = add_people(app, [{"email": f"p{i}@example.com"} for i in range(4)])
    html = html_of(client, f"/admin/subscribers?after={ids[0]}&page=3")  # the oldest
    assert listed_ids(html) == []
    assert 'No subscribers on this page.\n  <a href="/admin/subscribers">Back to the first ' \
           "page</a>" in html
    html = html_of(client, "/admin/subscribers?page=7")
    assert listed_ids(html) == [] and "Back to the first page" in html
    # Typed-in page numbers reach MAX_OFFSET rows deep; "Next" goes on from there.
    html = html_of(client, f"/admin/subscribers?page={queries.MAX_OFFSET // 3 + 5}")
    assert "further pages are reached with “Next”" in html


def test_a_page_continued_from_a_deleted_subscriber_says_so(small_pages):
    app, client = small_pages
    ids = add_people(app, [{"email": f"p{i}@example.com"} for i in range(5)])
    with app.app_context():
        db.session.delete(db.session.get(Subscriber, ids[2]))
        db.session.commit()
    html = html_of(client, f"/admin/subscribers?after={ids[2]}&page=2")
    assert listed_ids(html) == []
    assert "no longer in the list" in html and 'href="/admin/subscribers"' in html


# --- totals -----------------------------------------------------------------------------


def test_totals_past_the_cap_are_shown_as_more_than(app, monkeypatch):
    client = signed_in(app)
    add_people(app, [{"email": f"p{i}@example.com"} for i in range(5)])
    with app.app_context():
        assert queries.count_matching(queries.SubscriberFilter(), cap=3) == 4
        assert queries.count_matching(queries.SubscriberFilter(), cap=10) == 5
    assert "5 subscribers." in html_of(client, "/admin/subscribers")
    monkeypatch.setattr(views, "COUNT_CAP", 3)
    html = html_of(client, "/admin/subscribers")
    assert "More than 3 subscribers." in html
    assert len(listed_ids(html)) == 5


def test_status_counts_of_a_large_list_are_recounted_once_a_minute(app, db_backend,
                                                                    monkeypatch):
    client = signed_in(app)
    add_people(app, [{"email": "first@example.com"}])
    queries._counts_cache.clear()
    if db_backend == "postgresql":
        with app.app_context():  # PostgreSQL's size estimate, as autovacuum keeps it
            db.session.execute(text("ANALYZE subscriber"))
            db.session.commit()
    monkeypatch.setattr(queries, "EXACT_COUNTS_BELOW", 1)  # as if the list were large

    def active_count() -> str:
        html = html_of(client, "/admin/subscribers")
        return re.search(r"active</a></dt><dd>([\d,]+)</dd>", html).group(1)

    assert active_count() == "1"
    with app.app_context():
        add_subscriber("second@example.com")
    if db_backend == "postgresql":
        assert active_count() == "1"  # from the cache
        assert "recounted once a minute" in html_of(client, "/admin/subscribers")
        monkeypatch.setattr(queries, "COUNTS_TTL", -1.0)
        assert active_count() == "2"
    else:  # SQLite lists are small: always counted
        assert active_count() == "2"
    queries._counts_cache.clear()


@pytest.mark.parametrize("cap", [2, 10_000])
def test_filtered_pages_are_the_same_whether_few_or_many_match(small_pages, monkeypatch,
                                                               cap):
    """Few matches are fetched through the filters' indexes and sorted, many by walking an
    index in sort order (see ``subscriber_page``); both give the same pages."""
    app, client = small_pages
    monkeypatch.setattr(views, "COUNT_CAP", cap)
    ids = add_people(app, [{"email": f"{n}{i}@example.com", "next_position": 1 + i % 3,
                            "status": Status.ACTIVE if n == "keep" else Status.PAUSED}
                           for i in range(6) for n in ("keep", "drop")])
    keep = [i for n, i in enumerate(ids) if n % 2 == 0]
    for sort, want in [("oldest", keep), ("newest", keep[::-1])]:
        pages = walk(client, f"/admin/subscribers?status=active&sort={sort}")
        assert sum(pages, []) == want and [len(p) for p in pages] == [3, 3]
    pages = walk(client, "/admin/subscribers?status=active&lesson=2&sort=email")
    assert sum(pages, []) == [keep[1], keep[4]]
