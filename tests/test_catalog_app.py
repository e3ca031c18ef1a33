"""The app and its catalog: which course runs (``COURSE``), reloading in development, and
the per-course schedule and Reply-To through the real tick and a real worker."""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import time_machine

from course import ConfigError, create_app, signup
from course.content import current_catalog, current_course
from course.extensions import db
from course.lessons import load_course
from course.models import SignupRequest, Subscriber
from course.tracking import released_send_time
from tests.conftest import run_jobs
from tests.helpers import SHIPPED_COURSE, copy_shipped_course
from tests.test_course_e2e import cron_tick, lesson_subjects

SLUG = SHIPPED_COURSE.name
PARIS = ZoneInfo("Europe/Paris")


def bare_app(lessons_dir: Path, **config):
    """The app on a throwaway database: enough to see which course it serves."""
    return create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://",
                       "LESSONS_DIR": str(lessons_dir), **config})


def two_courses(tmp_path: Path) -> Path:
    course = copy_shipped_course(tmp_path)
    second = course.parent / "second"
    shutil.copytree(course, second)
    yml = second / "course.yml"
    yml.write_text(yml.read_text().replace("title: Networking for career changers",
                                           "title: The second course"))
    return course.parent


def test_the_only_course_runs_without_a_setting(tmp_path: Path):
    app = bare_app(copy_shipped_course(tmp_path).parent, COURSE="")
    with app.app_context():
        assert current_course().slug == SLUG
        assert list(current_catalog().courses) == [SLUG]


def test_course_picks_one_of_several(tmp_path: Path):
    app = bare_app(two_courses(tmp_path), COURSE="second")
    with app.app_context():
        assert (current_course().slug, current_course().title) == ("second",
                                                                   "The second course")


def test_several_courses_and_no_setting_refuse_to_start_naming_it(tmp_path: Path):
    root = two_courses(tmp_path)
    with pytest.raises(ConfigError) as info:
        bare_app(root, COURSE="")
    assert str(info.value) == (f"2 courses in {root} (networking-for-career-changers, second): "
                               "set COURSE to the one to run")
    with pytest.raises(ConfigError, match=r"^COURSE='third' is not a course in "):
        bare_app(root, COURSE="third")


def test_development_reloads_changed_course_files_at_most_once_a_second(tmp_path, caplog):
    course_dir = copy_shipped_course(tmp_path)
    app = bare_app(course_dir.parent, COURSE="")
    state = app.extensions["minicourse_course"]
    yml = course_dir / "course.yml"
    original = yml.read_text()
    with app.app_context():
        first = current_course()
        yml.write_text(original.replace("title: Networking for career changers",
                                        "title: Networking, edited"))
        state._checked = time.monotonic()  # just looked: the next look waits a second
        assert current_course() is first
        state._checked -= 2
        assert current_course().title == "Networking, edited"
        # A broken edit keeps the last good course serving, and says why.
        edited = current_course()
        yml.write_text(original.replace("send_hour: 9", "send_hour: 99"))
        state._checked -= 2
        with caplog.at_level(logging.ERROR, logger="course.content"):
            assert current_course() is edited
        assert f"{yml}:" in caplog.text and "send_hour must be 0 to 23" in caplog.text
        # A new lesson file counts as a change too.
        yml.write_text(original)
        extra = course_dir / "11-extra.md"
        extra.write_text((course_dir / "10-already-arrived.md").read_text()
                         .replace("position: 10", "position: 11")
                         .replace("slug: already-arrived", "slug: extra"))
        state._checked -= 2
        assert current_course().length == 11
        # A second course while no COURSE is set: the running one keeps serving, and the
        # log says what to set before the next start.
        shutil.copytree(course_dir, course_dir.parent / "second")
        state._checked -= 2
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="course.content"):
            assert current_course().slug == SLUG and current_course().length == 11
        assert "set COURSE to the one to run" in caplog.text


def test_production_never_reloads(tmp_path: Path):
    course_dir = copy_shipped_course(tmp_path)
    env = {"MINICOURSE_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(48),
           "BASE_URL": "https://course.example.org", "MAIL_BACKEND": "smtp",
           "SMTP_HOST": "smtp.example.org", "MAIL_FROM": "course@example.org"}
    app = bare_app(course_dir.parent, ENV=env, COURSE="")
    yml = course_dir / "course.yml"
    yml.write_text(yml.read_text().replace("title: Networking for career changers",
                                           "title: Changed on disk"))
    app.extensions["minicourse_course"]._checked -= 2
    with app.app_context():
        assert current_course().title == "Networking for career changers"


def test_a_gated_lesson_released_early_still_waits_its_own_delay(tmp_path: Path):
    course_dir = copy_shipped_course(tmp_path)
    lesson = next(course_dir.glob("03-*.md"))
    lesson.write_text(lesson.read_text().replace("\ntitle:", "\ndelay_days: 3\ntitle:", 1))
    course = load_course(course_dir)
    sent = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)  # a Monday
    done = sent + timedelta(hours=1)
    assert released_send_time(course, "UTC", sent, done, 3) == datetime(2026, 6, 4, 9,
                                                                        tzinfo=UTC)
    assert released_send_time(course, "UTC", sent, done, 2) == datetime(2026, 6, 2, 9,
                                                                        tzinfo=UTC)


def scheduled_course(tmp_path: Path) -> Path:
    """The shipped course on Mon/Wed/Fri, 4 November skipped, lesson 3 three days after
    lesson 2, and its own Reply-To."""
    course_dir = copy_shipped_course(tmp_path)
    yml = course_dir / "course.yml"
    yml.write_text(yml.read_text().replace("skip_weekends: false\n", "")
                   + "send_days: [mon, wed, fri]\nskip_dates: [2026-11-04]\n"
                   + "reply_to: coach@example.org\n")
    lesson = next(course_dir.glob("03-*.md"))
    lesson.write_text(lesson.read_text().replace("\ntitle:", "\ndelay_days: 3\ntitle:", 1))
    return course_dir.parent


def test_send_days_skipped_dates_and_delay_days_through_a_real_worker_across_dst(
        make_app, outbox, tmp_path):
    app = make_app(LESSONS_DIR=str(scheduled_course(tmp_path)), COURSE="",
                   MAIL_REPLY_TO="everyone@example.org")
    # Thursday 22 October 2026 in Paris; Europe falls back on Sunday 25 October.
    with time_machine.travel(datetime(2026, 10, 22, 10, 0, tzinfo=PARIS), tick=True) as clock:
        with app.test_request_context():
            request_id = signup.signup("paris@example.com", "Pat", "Europe/Paris",
                                       signup.Consent(ip="127.0.0.1", user_agent="pytest")).id
        run_jobs(app)
        with app.app_context():
            req = db.session.get(SignupRequest, request_id)
            sub_id = req.subscriber_id
            signup.confirm(sub_id, req.nonce)
        run_jobs(app)
        assert len(lesson_subjects(outbox)) == 1, "lesson 1 goes out on confirmation"
        sent_local = []
        for position in range(2, 8):
            with app.app_context():
                due = db.session.get(Subscriber, sub_id).next_send_at
            clock.move_to(due - timedelta(minutes=1))
            cron_tick(app)
            assert len(lesson_subjects(outbox)) == position - 1
            clock.move_to(due + timedelta(seconds=30))
            cron_tick(app)
            assert len(lesson_subjects(outbox)) == position
            sent_local.append(due.astimezone(PARIS))
    # Fri 23 (CEST); Mon 26 (lesson 3's three days, after the change to CET); Wed 28;
    # Fri 30; Mon 2 November; Fri 6 (Wednesday the 4th is skipped).
    assert [(t.strftime("%a %m-%d %H:%M"), t.utcoffset()) for t in sent_local] == [
        ("Fri 10-23 09:00", timedelta(hours=2)), ("Mon 10-26 09:00", timedelta(hours=1)),
        ("Wed 10-28 09:00", timedelta(hours=1)), ("Fri 10-30 09:00", timedelta(hours=1)),
        ("Mon 11-02 09:00", timedelta(hours=1)), ("Fri 11-06 09:00", timedelta(hours=1))]
    # The course's own Reply-To, on the confirmation and on every lesson.
    assert {m["Reply-To"] for m in outbox} == {"coach@example.org"}
    assert len(outbox) == 8


@pytest.mark.parametrize(("send_days", "pace"), [
    ("[mon, tue, wed, thu, fri]", "One lesson each weekday"),
    ("[mon, wed, fri]", "One lesson on Mondays, Wednesdays and Fridays"),
])
def test_the_course_page_states_the_pace_its_send_days_give(make_app, tmp_path, send_days,
                                                            pace):
    course_dir = copy_shipped_course(tmp_path)
    yml = course_dir / "course.yml"
    yml.write_text(yml.read_text().replace("skip_weekends: false", f"send_days: {send_days}"))
    html = make_app(LESSONS_DIR=str(course_dir.parent)).test_client().get("/").get_data(
        as_text=True)
    assert f"<span>{pace}</span>" in html and f"{pace}, straight to your inbox." in html
    assert f"{pace[:1].lower()}{pace[1:]}, after I confirm my address" in html
