"""The course the app serves, loaded and validated once when the app is created."""

from __future__ import annotations

from flask import Flask, current_app

from .lessons import Course, load_course


def init_app(app: Flask) -> None:
    # Raises CourseError (file:line problems) so an invalid course never starts.
    # Production also needs what a public site must show (a postal address).
    app.extensions["minicourse_course"] = load_course(
        app.config["LESSONS_DIR"], production=app.config["MINICOURSE_ENV"] == "production"
    )


def current_course() -> Course:
    course: Course = current_app.extensions["minicourse_course"]
    return course
