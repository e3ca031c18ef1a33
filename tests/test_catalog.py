"""The course catalog on disk: course folders, per-course settings, ``flask course list``,
``flask course new`` and ``flask lessons check`` over every course."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from course.catalog import load_catalog
from course.lessons import CourseError, load_course
from course.schedule import EVERY_DAY
from tests.helpers import SHIPPED_COURSE, copy_shipped_course
from tests.test_lessons import run_flask

SLUG = SHIPPED_COURSE.name


def problems_of(root: Path, **kwargs) -> list[str]:
    with pytest.raises(CourseError) as info:
        load_catalog(root, **kwargs)
    return info.value.problems


def add_course(root: Path, slug: str, **settings: str) -> Path:
    """Another course in the catalog: the shipped one copied, with ``settings`` appended."""
    folder = root / slug
    shutil.copytree(SHIPPED_COURSE, folder)
    course_file = folder / "course.yml"
    text = course_file.read_text()
    if "send_days" in settings:
        text = text.replace("skip_weekends: false\n", "")
    course_file.write_text(text + "".join(
        f"{key}: {value}\n" for key, value in settings.items()))
    return folder


def line_of(path: Path, key: str) -> int:
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(f"{key}:"))


def test_the_shipped_catalog_holds_the_networking_course_under_its_slug():
    catalog = load_catalog(SHIPPED_COURSE.parent)
    assert list(catalog.courses) == [SLUG]
    course = catalog.courses[SLUG]
    assert course.slug == SLUG and course.length == 10
    assert course.title == "Networking for career changers"
    assert course.send_days == EVERY_DAY and course.reply_to == "" and course.next_course == ""


def test_a_folder_name_that_is_not_a_slug_is_reported(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    shutil.copytree(course, course.parent / "My Course")
    problems = problems_of(course.parent)
    assert problems == [f"{course.parent / 'My Course'}:1: the folder name 'My Course' is not "
                        "a course slug (lowercase letters, digits and hyphens, such as my-course)"]


def test_a_course_file_left_at_the_top_says_to_move_it_into_a_folder(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    shutil.copy(course / "course.yml", course.parent / "course.yml")
    problems = problems_of(course.parent)
    assert len(problems) == 1
    assert problems[0].startswith(f"{course.parent / 'course.yml'}:1: a course lives in its "
                                  "own folder")


def test_an_empty_lessons_folder_says_how_to_make_a_course(tmp_path: Path):
    (tmp_path / "lessons").mkdir()
    assert problems_of(tmp_path / "lessons") == [
        f"{tmp_path / 'lessons'}:1: no courses: create one with `flask course new SLUG`"]


def test_every_broken_course_is_reported_not_just_the_first(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    other = add_course(course.parent, "second")
    for folder in (course, other):
        lesson = next(folder.glob("03-*.md"))
        lesson.write_text(lesson.read_text().replace("subject:", "subjekt:", 1))
    problems = problems_of(course.parent)
    assert [p.split(":")[0] for p in problems] == [str(next(course.glob("03-*.md"))),
                                                   str(next(other.glob("03-*.md")))]


def test_next_course_must_name_a_course_of_the_catalog(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    folder = add_course(course.parent, "first", next_course="missing-course")
    file = folder / "course.yml"
    assert problems_of(course.parent) == [
        f"{file}:{line_of(file, 'next_course')}: next_course 'missing-course' is not a course "
        f"in {course.parent}"]


def test_a_chain_of_courses_loads_and_a_loop_is_refused(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    add_course(course.parent, "first", next_course="second", next_course_mode="auto")
    add_course(course.parent, "second", next_course=SLUG)
    catalog = load_catalog(course.parent)
    assert catalog.courses["first"].next_course == "second"
    assert catalog.courses["first"].next_course_mode == "auto"
    assert catalog.courses["second"].next_course_mode == "offer"
    # Close the loop: the networking course leads back to the first.
    with (course / "course.yml").open("a") as f:
        f.write("next_course: first\n")
    problems = problems_of(course.parent)
    assert any(p.startswith(f"{course / 'course.yml'}:") and
               p.endswith(f"next_course makes a loop: {SLUG} -> first -> second -> {SLUG}")
               for p in problems), problems
    assert len(problems) == 3  # each course in the loop, on its own next_course line


def test_a_course_cannot_follow_itself(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    with (course / "course.yml").open("a") as f:
        f.write(f"next_course: {SLUG}\n")
    assert problems_of(course.parent)[0].endswith("next_course is this course itself")


def test_only_checks_one_course_and_names_the_courses_when_it_is_not_one(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    broken = add_course(course.parent, "broken", send_hour="25")
    assert list(load_catalog(course.parent, only=SLUG).courses) == [SLUG]
    assert "send_hour" in problems_of(course.parent, only="broken")[0]
    assert problems_of(course.parent, only="nope") == [
        f"{course.parent}:1: there is no course 'nope' (courses: broken, {SLUG})"]
    assert broken.is_dir()


# --- per-course settings ------------------------------------------------------------------

def with_settings(tmp_path: Path, text: str, *, drop_skip_weekends: bool = True) -> Path:
    course = copy_shipped_course(tmp_path)
    file = course / "course.yml"
    body = file.read_text()
    if drop_skip_weekends:
        body = body.replace("skip_weekends: false\n", "")
    file.write_text(body + text)
    return course


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("send_days: [mon, funday]\n", "send_days", "'funday' is not a weekday"),
        ("send_days: []\n", "send_days", "send_days must be a list of weekdays"),
        ("send_days: mon\n", "send_days", "send_days must be a list of weekdays"),
        ("skip_dates: [2026-02-30]\n", "skip_dates", "in skip_dates is not a date"),
        ("skip_dates: ['13-01']\n", "skip_dates", "'13-01' in skip_dates is not a date"),
        ("skip_dates: 2026-12-25\n", "skip_dates", "skip_dates must be a list of dates"),
        ("reply_to: not an address\n", "reply_to", "reply_to must be one email address"),
        ("reply_to: \"a@example.com\\nBcc: x@example.com\"\n", "reply_to",
         "reply_to must be one email address"),
        ("next_course: Not A Slug\n", "next_course", "next_course must be the slug"),
        ("next_course_mode: later\n", "next_course_mode", "next_course_mode must be offer or auto"),
        ("next_course_mode: auto\n", "next_course_mode", "next_course_mode without next_course"),
    ],
)
def test_bad_course_settings_are_reported_on_their_line(tmp_path, text, key, message):
    course = with_settings(tmp_path, text)
    file = course / "course.yml"
    problems = problems_of(course.parent)
    assert any(p.startswith(f"{file}:{line_of(file, key)}: ") and message in p
               for p in problems), problems


def test_send_days_and_skip_weekends_together_are_refused(tmp_path: Path):
    course = with_settings(tmp_path, "send_days: [mon]\n", drop_skip_weekends=False)
    file = course / "course.yml"
    assert problems_of(course.parent) == [
        f"{file}:{line_of(file, 'send_days')}: use send_days or skip_weekends, not both "
        "(skip_weekends: true is send_days: [mon, tue, wed, thu, fri])"]


def test_settings_are_read_into_the_course(tmp_path: Path):
    course = load_course(with_settings(tmp_path, (
        "send_days: [Monday, wed, FRI]\n"
        "skip_dates: [2026-12-24, \"12-25\", '2027-01-01', \"02-29\"]\n"
        "reply_to: coach@example.org\n")))
    assert course.send_days == frozenset({0, 2, 4})
    assert course.skip_dates == frozenset({date(2026, 12, 24), date(2027, 1, 1)})
    assert course.skip_yearly == frozenset({(12, 25), (2, 29)})
    assert course.reply_to == "coach@example.org"
    assert course.rules.send_days == course.send_days and course.rules.send_hour == 9


def test_skip_weekends_is_a_shorthand_for_monday_to_friday(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    file = course / "course.yml"
    file.write_text(file.read_text().replace("skip_weekends: false", "skip_weekends: true"))
    loaded = load_course(course)
    assert loaded.send_days == frozenset(range(5)) and loaded.skip_weekends


@pytest.mark.parametrize(
    ("lesson", "value", "message"),
    [
        ("03", "0", "delay_days must be a whole number of days, 1 to 365"),
        ("03", "two", "delay_days must be a whole number of days, 1 to 365"),
        ("03", "366", "delay_days must be a whole number of days, 1 to 365"),
        ("01", "2", "the first lesson goes out on confirmation"),
    ],
)
def test_bad_delay_days_are_reported_on_their_line(tmp_path, lesson, value, message):
    course = copy_shipped_course(tmp_path)
    path = next(course.glob(f"{lesson}-*.md"))
    path.write_text(path.read_text().replace("\ntitle:", f"\ndelay_days: {value}\ntitle:", 1))
    problems = problems_of(course.parent)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}:{line_of(path, 'delay_days')}: {message}")


def test_delay_days_sets_the_wait_before_that_lesson_only(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    path = next(course.glob("03-*.md"))
    path.write_text(path.read_text().replace("\ntitle:", "\ndelay_days: 4\ntitle:", 1))
    loaded = load_course(course)
    assert loaded.lesson_at(3).delay_days == 4
    assert [loaded.days_before(p) for p in (2, 3, 4)] == [1, 4, 1]


# --- the command line ---------------------------------------------------------------------

def test_course_new_makes_a_course_that_passes_the_check(tmp_path: Path):
    root = copy_shipped_course(tmp_path).parent
    made = run_flask(["course", "new", "public-speaking", "--title", 'Speak "up"'],
                     {"LESSONS_DIR": str(root), "COURSE": ""}, tmp_path)
    assert made.returncode == 0, made.stderr
    assert "set COURSE to the one the app runs" in made.stdout
    folder = root / "public-speaking"
    assert sorted(p.name for p in folder.iterdir()) == ["01-welcome.md", "02-first-step.md",
                                                        "course.yml"]
    text = (folder / "course.yml").read_text()
    assert "# Weekdays lessons go out on" in text and "send_days:" in text
    assert "# Optional: days after the previous lesson" in (folder / "02-first-step.md").read_text()
    course = load_catalog(root).courses["public-speaking"]
    assert course.title == 'Speak "up"' and course.length == 2
    assert course.lesson_at(2).delay_days == 2 and course.send_days == frozenset(range(5))
    check = run_flask(["lessons", "check", "--course", "public-speaking"],
                      {"LESSONS_DIR": str(root), "COURSE": ""}, tmp_path)
    assert check.returncode == 0, check.stderr
    assert "ok: public-speaking: 'Speak \"up\"', 2 lessons" in check.stdout
    every = run_flask(["lessons", "check"], {"LESSONS_DIR": str(root), "COURSE": ""}, tmp_path)
    assert every.returncode == 0, every.stderr
    assert f"ok: {SLUG}:" in every.stdout and "ok: public-speaking:" in every.stdout


@pytest.mark.parametrize(("slug", "message"), [
    (SLUG, "already exists"),
    ("Bad_Slug", "is not a course slug"),
    ("-x", "is not a course slug"),
])
def test_course_new_refuses_an_existing_or_invalid_slug(tmp_path: Path, slug: str, message: str):
    root = copy_shipped_course(tmp_path).parent
    before = sorted(p.name for p in root.rglob("*"))
    result = run_flask(["course", "new", "--", slug] if slug.startswith("-")
                       else ["course", "new", slug], {"LESSONS_DIR": str(root)}, tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert sorted(p.name for p in root.rglob("*")) == before


def test_course_list_and_a_second_course_without_course_setting(tmp_path: Path):
    root = copy_shipped_course(tmp_path).parent
    add_course(root, "mornings", send_days="[mon, wed, fri]", skip_dates='["12-25"]',
               cadence_days="2")
    env = {"LESSONS_DIR": str(root), "COURSE": ""}
    listed = run_flask(["course", "list"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        "  mornings  'Networking for career changers'  10 lessons  every 2 day(s) at 09:00 "
        "local  mon, wed, fri, 1 date(s) skipped",
        f"  {SLUG}  'Networking for career changers'  10 lessons  every 1 day(s) at 09:00 "
        "local  every day"]
    assert "set COURSE" in listed.stderr
    # The app itself refuses to start, in one line that names the setting.
    start = run_flask(["routes"], env, tmp_path)
    assert start.returncode != 0 and "Traceback" not in start.stderr
    assert (f"minicourse: 2 courses in {root} (mornings, {SLUG}): set COURSE to the one to run"
            in start.stderr)
    chosen = run_flask(["course", "list"], {**env, "COURSE": "mornings"}, tmp_path)
    assert chosen.stdout.splitlines()[0].startswith("* mornings")
    assert run_flask(["routes"], {**env, "COURSE": "mornings"}, tmp_path).returncode == 0


def test_lessons_check_names_every_problem_of_every_course(tmp_path: Path):
    course = copy_shipped_course(tmp_path)
    other = add_course(course.parent, "other", send_days="[mon, someday]")
    result = run_flask(["lessons", "check"], {"LESSONS_DIR": str(course.parent)}, tmp_path)
    assert result.returncode == 1
    file = other / "course.yml"
    assert f"{file}:{line_of(file, 'send_days')}: 'someday' is not a weekday" in result.stderr
    # One course checks on its own; the app it renders with still needs every course.
    only = run_flask(["lessons", "check", "--course", SLUG],
                     {"LESSONS_DIR": str(course.parent)}, tmp_path)
    assert "Traceback" not in only.stderr and "'someday'" in only.stderr
    assert "the app does not start (see above)" in only.stderr and only.returncode == 1
    (other / "course.yml").write_text((other / "course.yml").read_text().replace(
        "someday", "tue"))
    only = run_flask(["lessons", "check", "--course", SLUG],
                     {"LESSONS_DIR": str(course.parent)}, tmp_path)
    assert only.returncode == 0, only.stderr
    assert f"ok: {SLUG}:" in only.stdout and "ok: other:" not in only.stdout
