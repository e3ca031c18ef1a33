"""Small things a newcomer meets first: the icon, and the way back in to the admin."""

from __future__ import annotations

import re
import struct

import pytest
from conftest import EMAIL, add_admin, post_login
from flask import Flask

RESET = ".venv/bin/flask --app wsgi admin reset EMAIL"


def test_favicon_ico_is_served_as_an_icon(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.mimetype in {"image/vnd.microsoft.icon", "image/x-icon"}
    reserved, kind, count = struct.unpack("<HHH", response.data[:6])
    assert (reserved, kind) == (0, 1) and count >= 1  # an ICO header, not some other file


@pytest.mark.parametrize("page", ["/", "/admin/login"])
def test_pages_link_the_svg_icon_and_it_is_served(client, page):
    html = client.get(page).get_data(as_text=True)
    link = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', html)
    assert link, f"{page} links no SVG icon"
    icon = client.get(link.group(1))
    assert icon.status_code == 200 and icon.mimetype == "image/svg+xml"
    assert icon.get_data(as_text=True).startswith("<svg")


def test_login_page_in_development_says_how_to_reset_the_password(app, client):
    html = client.get("/admin/login").get_data(as_text=True)
    assert f"<code>{RESET}</code>" in html
    assert "admin@example.com" in html
    # The command it shows is the real one: it gives the account a new, working password.
    add_admin(app, EMAIL)
    args = RESET.split("--app wsgi ", 1)[1].replace("EMAIL", EMAIL).split()
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    new = re.search(r"New password \(shown only this once\): (\S+)", result.output)
    assert new, result.output
    signed_in = post_login(client, EMAIL, new.group(1))
    assert signed_in.status_code == 302, signed_in.get_data(as_text=True)[:500]


def test_login_page_in_production_keeps_that_to_itself(make_app):
    app: Flask = make_app(MINICOURSE_ENV="production")
    html = app.test_client().get("/admin/login").get_data(as_text=True)
    assert "Sign in" in html
    assert "admin reset" not in html and 'id="reset-hint"' not in html
