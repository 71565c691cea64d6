"""Store URLs in messages and reports: never their password, otherwise unchanged."""

from __future__ import annotations

import pytest

from duro.stores.urls import display_url


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:s3cret@h:5432/db?schema=x", "postgresql://u@h:5432/db?schema=x"),
    ("postgres://:s3cret@h/db", "postgres://h/db"),
    ("postgresql://u:p%40ss@h1:5432,h2:5433/db?password=s3cret&sslmode=require&schema=x",
     "postgresql://u@h1:5432,h2:5433/db?sslmode=require&schema=x"),
    ("postgresql://u:p@ss@h/db", "postgresql://u@h/db"),  # an unencoded "@" in the password
    ("postgresql://u@/db?host=/run/postgresql", "postgresql://u@/db?host=/run/postgresql"),
    ("postgresql:///db?host=/tmp", "postgresql:///db?host=/tmp"),  # no host: the three slashes stay
    ("postgresql://u@h/db?sslpassword=k", "postgresql://u@h/db"),
    ("lmdb:///var/lib/duro", "lmdb:///var/lib/duro"),
    ("lmdb://./duro-data?map_size=1048576", "lmdb://./duro-data?map_size=1048576"),
    ("postgresq://app:s3cret@db/prod", "postgresq://app@db/prod"),  # a typo in the scheme
    ("nope://u:s3cret@[x/db", "nope://u@[x/db"),  # not a URL urlsplit reads
])
def test_reports_never_show_the_password(url: str, shown: str) -> None:
    assert display_url(url) == shown
