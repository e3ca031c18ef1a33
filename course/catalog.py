"""The course catalog: every course folder under ``lessons/``, loaded and checked together.

A course is ``lessons/<slug>/course.yml`` plus its lesson files; its slug is its folder's
name. Each folder is validated by ``lessons.load_course``; what only the whole catalog can
tell (a slug that is not a slug, a ``next_course`` naming no course, a loop of courses)
is checked here, with the same ``file:line: problem`` lines.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .lessons import COURSE_FILE, SLUG_RE, Course, CourseError, load_course


@dataclass(frozen=True)
class Catalog:
    root: Path
    courses: dict[str, Course]  # by slug, in slug order

    def get(self, slug: str) -> Course | None:
        return self.courses.get(slug)


def course_folders(root: Path) -> list[Path]:
    """The folders that hold a course: every visible sub-folder of ``root``."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def load_catalog(root: str | Path, *, production: bool = False,
                 only: str | None = None) -> Catalog:
    """Load and validate every course under ``root``, raising CourseError with every
    problem of every course; ``only`` checks one course (and that its chain exists)."""
    base = Path(root)
    if not base.is_dir():
        raise CourseError([f"{base}:1: the lessons folder does not exist"])
    problems: list[str] = []
    for stray in sorted([*base.glob("*.md"), *base.glob(COURSE_FILE)]):
        problems.append(f"{stray}:1: a course lives in its own folder: move the course "
                        f"file and its lessons to {base}/<slug>/ (for example "
                        f"{base}/my-course/)")
    folders = course_folders(base)
    if only is not None and only not in {f.name for f in folders}:
        raise CourseError([f"{base}:1: there is no course {only!r} "
                           f"(courses: {', '.join(f.name for f in folders) or 'none'})"])
    courses: dict[str, Course] = {}
    for folder in folders:
        if not SLUG_RE.match(folder.name):
            problems.append(f"{folder}:1: the folder name {folder.name!r} is not a course slug "
                            "(lowercase letters, digits and hyphens, such as my-course)")
            continue
        if only is not None and folder.name != only:
            continue
        try:
            course = load_course(folder, production=production)
        except CourseError as exc:
            problems.extend(exc.problems)
            continue
        courses[folder.name] = dataclasses.replace(course, slug=folder.name)
    if not folders and not problems:
        problems.append(f"{base}:1: no courses: create one with `flask course new SLUG`")
    known = {f.name for f in folders}
    problems.extend(chain_problems(base, courses, known))
    if problems:
        raise CourseError(problems)
    return Catalog(base, courses)


def chain_problems(base: Path, courses: dict[str, Course], known: set[str]) -> list[str]:
    """``next_course`` must name another course of the catalog, and never lead back."""
    problems: list[str] = []
    for slug, course in courses.items():
        following = course.next_course
        if not following:
            continue
        where = f"{base / slug / COURSE_FILE}:{key_line(base / slug / COURSE_FILE, 'next_course')}"
        if following == slug:
            problems.append(f"{where}: next_course is this course itself")
        elif following not in known:
            problems.append(f"{where}: next_course {following!r} is not a course in {base}")
            continue
        seen = [slug]
        step: str = following
        while step in courses and step not in seen:
            seen.append(step)
            step = courses[step].next_course
        if step in seen and step == slug and len(seen) > 1:
            problems.append(f"{where}: next_course makes a loop: "
                            + " -> ".join([*seen, step]))
    return problems


def key_line(path: Path, key: str) -> int:
    """The line ``key:`` starts on in a YAML file, 1 when it cannot be found."""
    pattern = re.compile(rf"^{re.escape(key)}\s*:")
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.match(line):
                return number
    except (OSError, UnicodeDecodeError):
        pass
    return 1


def fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when any course file is added, removed or edited: the name, size and
    modification time of every file one and two levels down. A few dozen ``stat`` calls."""
    entries: list[tuple[str, int, int]] = []
    try:
        with os.scandir(root) as top:
            for entry in top:
                st = entry.stat()
                entries.append((entry.name, st.st_size, st.st_mtime_ns))
                if entry.is_dir():
                    with os.scandir(entry.path) as inner:
                        for item in inner:
                            st = item.stat()
                            entries.append((f"{entry.name}/{item.name}", st.st_size,
                                            st.st_mtime_ns))
    except OSError:
        return ()
    return tuple(sorted(entries))
