"""The course the app serves: the catalog under ``LESSONS_DIR``, loaded and validated when
the app is created, and in development reloaded when its files change.

Until enrollments exist the app runs one course: the one ``COURSE`` names, or the only one.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from flask import Flask, current_app

from .catalog import Catalog, fingerprint, load_catalog
from .config import ConfigError
from .lessons import Course, CourseError

log = logging.getLogger(__name__)
# How often, at most, a development process looks at the files' modification times.
RELOAD_CHECK_SECONDS = 1.0


class CourseState:
    """The loaded catalog and the course chosen from it, with the reload bookkeeping."""

    def __init__(self, root: Path, *, production: bool, selected: str, reload: bool):
        self.root = root
        self.production = production
        self.selected = selected
        self.reload = reload
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._print = fingerprint(root)
        self.catalog = load_catalog(root, production=production)
        self.course = choose(self.catalog, selected)

    def refresh(self) -> None:
        """Reload when a file changed since the last look (at most once a second).

        A catalog broken mid-edit keeps the last good one serving, and logs every problem
        as ``file:line`` so the author sees them in the dev server's output.
        """
        now = time.monotonic()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            if now - self._checked < RELOAD_CHECK_SECONDS:
                return
            self._checked = now
            current = fingerprint(self.root)
            if current == self._print:
                return
            self._print = current
            try:
                catalog = load_catalog(self.root, production=self.production)
                course = choose(catalog, self.selected)
            except (CourseError, ConfigError) as exc:
                log.error("course files changed but do not load; still serving the last "
                          "good version:\n%s", exc)
                return
            self.catalog, self.course = catalog, course
            log.info("course files changed: reloaded %s", ", ".join(catalog.courses))


def choose(catalog: Catalog, selected: str) -> Course:
    """The course named by ``COURSE``, or the only one; several and no ``COURSE`` is an error
    (running several at once comes with enrollments)."""
    if selected:
        course = catalog.get(selected)
        if course is None:
            raise ConfigError(f"COURSE={selected!r} is not a course in {catalog.root} "
                              f"(there: {', '.join(catalog.courses)})")
        return course
    if len(catalog.courses) > 1:
        raise ConfigError(f"{len(catalog.courses)} courses in {catalog.root} "
                          f"({', '.join(catalog.courses)}): set COURSE to the one to run")
    return next(iter(catalog.courses.values()))


def init_app(app: Flask) -> None:
    # Raises CourseError (file:line problems) so an invalid course never starts.
    # Production also needs what a public site must show (a postal address).
    production = app.config["MINICOURSE_ENV"] == "production"
    app.extensions["minicourse_course"] = CourseState(
        Path(app.config["LESSONS_DIR"]), production=production,
        selected=app.config.get("COURSE", ""), reload=not production)


def current_course() -> Course:
    state: CourseState = current_app.extensions["minicourse_course"]
    if state.reload:
        state.refresh()
    return state.course


def current_catalog() -> Catalog:
    state: CourseState = current_app.extensions["minicourse_course"]
    if state.reload:
        state.refresh()
    return state.catalog
