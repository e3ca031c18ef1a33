"""Who sends the course and how long it takes: the course file's author, postal address and
privacy page, and each lesson's reading and exercise time, checked with file:line errors."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from course import ConfigError, create_app
from course.lessons import CourseError, load_course
from course.lessons_timing import count_words, reading_minutes, stated_exercise_minutes
from tests.helpers import SHIPPED_COURSE, copy_shipped_course

ROOT = Path(__file__).resolve().parent.parent
LESSONS = SHIPPED_COURSE


@pytest.fixture
def course_dir(tmp_path: Path) -> Path:
    target = copy_shipped_course(tmp_path)
    return target


def problems_for(directory: Path, production: bool = False) -> list[str]:
    with pytest.raises(CourseError) as info:
        load_course(directory, production=production)
    return info.value.problems


def line_of(path: Path, starts: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1)
                if text.startswith(starts))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


# The shipped course -----------------------------------------------------------------------

def test_shipped_course_names_its_author_address_and_a_from_name_without_the_tool():
    course = load_course(LESSONS, production=True)
    assert course.author.name and course.author.bio
    assert course.author.photo == "author.png" and course.author.photo_type == "image/png"
    assert "Bristol" in course.postal_address and "\n" not in course.postal_address
    assert course.privacy_url == ""  # the built-in page
    assert "minicourse" not in course.sender_name.lower()


def test_shipped_lessons_read_in_about_two_minutes_with_exercises_of_15_to_25():
    course = load_course(LESSONS)
    for lesson in course.lessons:
        assert 300 < lesson.words < 600, lesson.path
        assert lesson.reading_minutes == 2, lesson.path
        assert lesson.exercise_minutes in range(15, 26), lesson.path
    assert course.timing.reading == (2, 2)
    assert course.timing.exercise == (15, 25)
    assert (course.timing.reading_text, course.timing.exercise_text) == ("2", "15–25")


def test_course_text_promises_no_hand_written_lengths():
    """The old description promised 'about five minutes' and '15-minute' exercises."""
    course = load_course(LESSONS)
    for text in (course.description, course.welcome, course.tagline):
        assert "minute" not in text.lower()


# Reading time -----------------------------------------------------------------------------

@pytest.mark.parametrize(("words", "minutes"), [(0, 1), (100, 1), (344, 1), (345, 2),
                                                (460, 2), (575, 3), (2300, 10)])
def test_reading_minutes_round_words_at_230_a_minute(words: int, minutes: int):
    assert reading_minutes(words) == minutes


def test_words_are_counted_without_markup_link_targets_or_list_numbers():
    body = ("## A heading\n\nRead [the guide](https://example.org/a/very/long/path) now.\n\n"
            "1. **Bold** step\n2. *another* step\n\n<br>\n")
    assert count_words(body) == 2 + 4 + 2 + 2


def test_the_exercise_section_times_are_found_with_their_lines():
    body = ("Intro says a 20-minute call.\n\n## Today's exercise\n\nSpend 15 to 20 minutes.\n"
            "Then a 5-minute review.\n\n## Next\n\nTake 60 minutes.\n")
    assert stated_exercise_minutes(body) == [(4, 15, 20), (5, 5, 5)]


# Loader checks, each with its file and line -----------------------------------------------

def test_exercise_minutes_that_disagree_with_the_exercise_are_reported(course_dir: Path):
    path = next(course_dir.glob("04-*.md"))
    edit(path, "exercise_minutes: 25", "exercise_minutes: 10")
    line = line_of(path, "Give yourself 25 minutes")
    expected = f"{path}:{line}: the exercise says 25 minutes but exercise_minutes is 10"
    assert expected in problems_for(course_dir)


@pytest.mark.parametrize("value", ["soon", "0", "241", "true", "2.5"])
def test_exercise_minutes_must_be_a_sensible_whole_number(course_dir: Path, value: str):
    path = next(course_dir.glob("03-*.md"))
    edit(path, "exercise_minutes: 20", f"exercise_minutes: {value}")
    line = line_of(path, "exercise_minutes")
    assert (f"{path}:{line}: exercise_minutes must be a whole number of minutes, 1 to 240"
            in problems_for(course_dir))


def test_an_exercise_that_names_a_time_needs_exercise_minutes(course_dir: Path):
    path = next(course_dir.glob("01-*.md"))
    edit(path, "exercise_minutes: 15\n", "")
    line = line_of(path, "Take 15 minutes")
    assert any(p.startswith(f"{path}:{line}: the exercise says 15 minutes: add "
                            "exercise_minutes") for p in problems_for(course_dir))


def test_a_lesson_without_a_timed_exercise_may_leave_exercise_minutes_out(course_dir: Path):
    path = next(course_dir.glob("01-*.md"))
    edit(path, "exercise_minutes: 15\n", "")
    edit(path, "Take 15 minutes with", "Take a moment with")
    course = load_course(course_dir)
    assert course.lesson_at(1).exercise_minutes is None
    assert course.timing.exercise == (20, 25)


def test_sender_name_carrying_the_tools_name_is_refused(course_dir: Path):
    course_file = course_dir / "course.yml"
    edit(course_file, 'sender_name: "Networking for career changers"',
         'sender_name: "Minicourse: Networking for career changers"')
    line = line_of(course_file, "sender_name")
    assert any(p.startswith(f"{course_file}:{line}: sender_name must not carry the tool's name")
               for p in problems_for(course_dir))


def test_missing_author_is_reported(course_dir: Path):
    course_file = course_dir / "course.yml"
    text = course_file.read_text()
    start = text.index("author:")
    end = text.index("# Where you can be written to")
    course_file.write_text(text[:start] + text[end:])
    assert f"{course_file}:1: missing 'author' (name, bio and optionally a photo)" in \
        problems_for(course_dir)


@pytest.mark.parametrize(("old", "new", "key", "message"), [
    ("  name: Robin Ellis", "  name: ''", "  name:", "author name must be non-empty text"),
    ("  bio: Career coach", "  bio: " + "x" * 300 + " Career coach", "  bio:",
     "author bio is 3"),
    ("  photo: author.png", "  photo: missing.png", "  photo:",
     "author photo 'missing.png' is not in"),
    ("  photo: author.png", "  photo: ../secret.png", "  photo:",
     "author photo must be a file name in the course folder"),
    ("  photo: author.png", "  photo: author.svg", "  photo:",
     "author photo 'author.svg' must be a .jpg, .png or .gif"),
    ("  photo: author.png", "  picture: author.png", "  picture:",
     "author has an unknown key 'picture'"),
])
def test_bad_author_fields_are_reported_on_their_line(course_dir: Path, old: str, new: str,
                                                      key: str, message: str):
    course_file = course_dir / "course.yml"
    edit(course_file, old, new)
    line = line_of(course_file, key)
    problems = problems_for(course_dir)
    assert any(p.startswith(f"{course_file}:{line}: {message}") for p in problems), problems


def test_a_photo_that_is_not_the_image_its_name_says_is_refused(course_dir: Path):
    (course_dir / "author.png").write_text("<svg onload=alert(1)>")
    course_file = course_dir / "course.yml"
    line = line_of(course_file, "  photo:")
    assert f"{course_file}:{line}: author photo 'author.png' is not a png image" in \
        problems_for(course_dir)


def test_a_photo_too_big_for_an_email_is_refused(course_dir: Path):
    path = course_dir / "author.png"
    path.write_bytes(path.read_bytes() + b"\0" * 400_000)
    assert any("KB; keep it under 300 KB" in p for p in problems_for(course_dir))


def test_postal_address_is_optional_in_development_and_required_in_production(
    course_dir: Path,
):
    course_file = course_dir / "course.yml"
    text = course_file.read_text()
    start = text.index("postal_address:")
    end = text.index("# Leave privacy_url out")
    course_file.write_text(text[:start] + text[end:])
    assert load_course(course_dir).postal_address == ""
    problems = problems_for(course_dir, production=True)
    assert any(p.startswith(f"{course_file}:1: postal_address is required in production")
               for p in problems), problems


def test_privacy_url_must_be_a_full_address(course_dir: Path):
    course_file = course_dir / "course.yml"
    edit(course_file, "# privacy_url: https://example.com/privacy", "privacy_url: /privacy")
    line = line_of(course_file, "privacy_url")
    assert any(p.startswith(f"{course_file}:{line}: privacy_url must be a full https://")
               for p in problems_for(course_dir))
    edit(course_file, "privacy_url: /privacy", "privacy_url: https://example.org/privacy")
    assert load_course(course_dir).privacy_url == "https://example.org/privacy"


# Where the checks run ---------------------------------------------------------------------

def test_production_app_refuses_a_course_without_a_postal_address(course_dir: Path,
                                                                    tmp_path: Path):
    course_file = course_dir / "course.yml"
    text = course_file.read_text()
    course_file.write_text(text[:text.index("postal_address:")]
                           + text[text.index("# Leave privacy_url out"):])
    env = {"MINICOURSE_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(48),
           "BASE_URL": "https://course.example.org", "MAIL_BACKEND": "smtp",
           "SMTP_HOST": "smtp.example.org", "MAIL_FROM": "course@example.org",
           "LESSONS_DIR": str(course_dir.parent)}
    with pytest.raises((CourseError, ConfigError)) as info:
        create_app({"ENV": env, "TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert "postal_address is required in production" in str(info.value)


def run_check(*args: str, env_extra: dict[str, str] | None = None):
    import os

    env = {k: v for k, v in os.environ.items() if k != "MINICOURSE_ENV"}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "lessons", "check", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_cli_check_prints_each_lessons_reading_and_exercise_time():
    result = run_check()
    assert result.returncode == 0, result.stderr
    assert "Reading time at 230 words a minute" in result.stdout
    lesson = load_course(LESSONS).lesson_at(4)
    assert (f"   4.  {lesson.words} words, 2 min read, 25 min exercise"
            in result.stdout.splitlines())
    assert "The course page says: about 2 min to read each, exercises of 15–25 min" in \
        result.stdout


def test_cli_check_holds_the_course_to_production_rules_when_asked(course_dir: Path):
    course_file = course_dir / "course.yml"
    text = course_file.read_text()
    course_file.write_text(text[:text.index("postal_address:")]
                           + text[text.index("# Leave privacy_url out"):])
    assert run_check("--dir", str(course_dir.parent)).returncode == 0
    result = run_check("--dir", str(course_dir.parent), "--production")
    assert result.returncode == 1
    assert f"{course_file}:1: postal_address is required in production" in result.stderr
    from_env = run_check("--dir", str(course_dir.parent),
                         env_extra={"MINICOURSE_ENV": "production"})
    assert from_env.returncode == 1
