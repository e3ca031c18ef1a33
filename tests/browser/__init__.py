"""Tests that drive the public pages and the admin in a real browser (Debian's Chromium)."""
