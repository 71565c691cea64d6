"""Tests of the web UI (duro ui): its JSON API, and the page in a real browser."""
