"""Secrets never leave the process: storage URLs are redacted wherever they are printed or saved."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpo.cli import app
from mpo.tuning.storage import redact

SECRET = "s3cr@t-pw"


def test_redact_hides_passwords_with_special_characters():
    assert redact(f"postgresql://mpo:{SECRET}@db.example:5432/x") == (
        "postgresql://mpo:***@db.example:5432/x"
    )
    assert redact("postgresql://mpo@db/x") == "postgresql://mpo@db/x"
    assert redact("runs/studies.journal") == "runs/studies.journal"


def _spec(tmp_path: Path) -> Path:
    spec = tmp_path / "s.toml"
    spec.write_text(
        'name = "spo"\nkind = "spo"\n[data]\nsource = "sp20"\n'
        'tickers = ["AAPL", "JNJ", "JPM", "KO"]\nadv = 1e8\nstart = "2017-01-01"\n'
        'end = "2018-06-30"\n[forecast]\nlookback = 60\n[risk]\nlookback = 60\n'
        '[tuning]\ntrain_start = "2017-04-13"\ntrain_end = "2017-08-31"\n'
        'test_start = "2017-12-14"\ntest_end = "2018-03-29"\nprune = false\n'
    )
    return spec


def test_unreachable_storage_error_has_no_password(tmp_path):
    url = f"postgresql://mpo:{SECRET}@127.0.0.1:1/mpo"
    result = CliRunner().invoke(
        app, ["tune", str(_spec(tmp_path)), "--storage", url, "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    assert "***" in result.output
    for piece in (SECRET, "s3cr", "t-pw"):
        assert piece not in result.output


@pytest.mark.skipif(
    not os.environ.get("MPO_TEST_POSTGRES_URL"),
    reason="set MPO_TEST_POSTGRES_URL (as .ci/run does) to run a study on PostgreSQL",
)
def test_a_real_study_never_prints_or_saves_the_password(tmp_path):
    # the CI server trusts local connections, so a password in the URL is accepted and ignored
    secret = "s3cret-pw"  # a real URL percent-encodes '@'; keep this one plain
    url = re.sub(r"://([^@/]+)@", rf"://\1:{secret}@", os.environ["MPO_TEST_POSTGRES_URL"])
    assert secret in url
    out = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        ["tune", str(_spec(tmp_path)), "--trials", "2", "--storage", url,
         "--study", f"redact-{os.getpid()}-{time.time_ns()}", "--out", str(out),
         "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    files = [p for p in out.rglob("*") if p.is_file()]
    files += list(tmp_path.glob("*.tuned.json"))
    assert files
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
