"""The course loader and ``flask lessons check``: every fault named by file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from course.lessons import CourseError, load_course
from tests.helpers import SHIPPED_COURSE, copy_shipped_course
from tests.outside import need_file

ROOT = Path(__file__).resolve().parent.parent
LESSONS = SHIPPED_COURSE
SEED = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "000_541731254e034548.txt"


@pytest.fixture
def course_dir(tmp_path: Path) -> Path:
    target = copy_shipped_course(tmp_path)
    return target


def problems_for(directory: Path) -> list[str]:
    with pytest.raises(CourseError) as info:
        load_course(directory)
    return info.value.problems


def test_shipped_course_has_ten_lessons_in_order_each_with_an_exercise():
    course = load_course(LESSONS)
    assert course.title == "Networking for career changers"
    assert [lesson.position for lesson in course.lessons] == list(range(1, 11))
    assert len({lesson.slug for lesson in course.lessons}) == 10
    for lesson in course.lessons:
        assert "## Today's exercise" in lesson.body, lesson.path
        assert 200 < len(lesson.body.split()) < 600, lesson.path


def test_lessons_follow_the_articles_tips_in_order():
    """Spot-check that each lesson carries its tip's idea, in the article's order."""
    course = load_course(LESSONS)
    keywords = [
        "fear", "family", "stranger", "why", "information",
        "ask", "overshar", "pull", "market", "recruiter",
    ]
    for lesson, word in zip(course.lessons, keywords, strict=True):
        assert word in (lesson.title + " " + lesson.body).lower(), (lesson.path, word)


def test_lessons_are_in_our_own_words_not_copied_from_the_article():
    seed = need_file(SEED, "the seed article the lessons were written from")
    article = " ".join(seed.read_text(encoding="utf-8").lower().split())
    for lesson in load_course(LESSONS).lessons:
        words = lesson.body.lower().split()
        copied = [
            " ".join(words[i : i + 10])
            for i in range(len(words) - 10)
            if " ".join(words[i : i + 10]) in article
        ]
        assert not copied, (lesson.path, copied[:2])


def test_content_hash_changes_with_the_text(course_dir: Path):
    before = load_course(course_dir).lesson_at(1)
    path = Path(before.path)
    path.write_text(path.read_text() + "\nOne more sentence.\n")
    after = load_course(course_dir).lesson_at(1)
    assert before.content_hash != after.content_hash


def test_missing_front_matter_field_names_the_file(course_dir: Path):
    path = next(course_dir.glob("03-*.md"))
    path.write_text(path.read_text().replace("subject:", "subjekt:", 1))
    assert any(p.startswith(f"{path}:1:") and "'subject'" in p for p in problems_for(course_dir))


def test_duplicate_slug_and_position_are_reported(course_dir: Path):
    first = next(course_dir.glob("01-*.md"))
    text = first.read_text()
    (course_dir / "11-copy.md").write_text(text)
    problems = problems_for(course_dir)
    assert any("slug 'skeptics-in-your-corner' is already used" in p for p in problems)
    assert any("position 1 is already used" in p for p in problems)


def test_relative_link_is_reported_with_its_line(course_dir: Path):
    path = next(course_dir.glob("02-*.md"))
    lines = path.read_text().splitlines()
    lines.append("See [our notes](/notes/today) for more.")
    path.write_text("\n".join(lines) + "\n")
    problems = problems_for(course_dir)
    expected = f"{path}:{len(lines)}: link '/notes/today' is not absolute (use a full https:// URL)"
    assert expected in problems


def test_invalid_yaml_reports_the_line(course_dir: Path):
    path = next(course_dir.glob("04-*.md"))
    text = path.read_text().replace("position: 4", "position: [4", 1)
    path.write_text(text)
    problems = problems_for(course_dir)
    assert any(p.startswith(f"{path}:") and "invalid YAML" in p for p in problems), problems


def test_bad_course_settings_are_reported(course_dir: Path):
    course_file = course_dir / "course.yml"
    text = course_file.read_text().replace("send_hour: 9", "send_hour: 25")
    text = text.replace("default_timezone: UTC", "default_timezone: Mars/Olympus")
    course_file.write_text(text)
    problems = problems_for(course_dir)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("send_hour"))
    assert f"{course_file}:{line}: send_hour must be 0 to 23" in problems
    assert any("unknown time zone 'Mars/Olympus'" in p for p in problems)


def test_gap_in_positions_is_reported(course_dir: Path):
    next(course_dir.glob("05-*.md")).unlink()
    assert any("without gaps" in p for p in problems_for(course_dir))


def run_flask(args: list[str], env_extra: dict[str, str], tmp_path: Path):
    import os

    env = {**os.environ, **env_extra, "MINICOURSE_INSTANCE": str(tmp_path / "instance")}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )


def test_cli_check_passes_on_the_shipped_course(tmp_path: Path):
    result = run_flask(["lessons", "check"], {}, tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("ok: networking-for-career-changers: 'Networking for career changers', 10 lessons"
            in result.stdout)


def test_cli_check_and_app_start_report_the_same_problem(course_dir: Path, tmp_path: Path):
    path = next(course_dir.glob("06-*.md"))
    path.write_text(path.read_text().replace("slug: ", "slug: Not A Slug ", 1))
    check = run_flask(["lessons", "check"], {"LESSONS_DIR": str(course_dir.parent)}, tmp_path)
    assert check.returncode == 1
    line = f"{path}:2: slug"
    assert line in check.stderr
    assert "Traceback" not in check.stderr
    start = run_flask(["routes"], {"LESSONS_DIR": str(course_dir.parent)}, tmp_path)
    assert start.returncode != 0
    assert line in start.stderr
    assert "Traceback" not in start.stderr
