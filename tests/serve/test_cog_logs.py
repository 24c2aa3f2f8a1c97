"""Each Cog server writes a log of its own, in ``WORK/_logs/``, that no other server truncates.

Two servers of one project run at once (as two ``./serve`` of one model on other ports would), with
the real coglet; each prediction shows up in its own server's log only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtp_cog.cogserver import CogServer, CogServerError
from lmtp_cog.serve.service import serve_project
from tests.support.served_projects import ECHO_MODEL

MODEL_INFO = {"ops_batch_json": json.dumps([["MODEL_INFO", {"stream_id": 1}]])}


def test_two_servers_of_one_project_write_two_whole_logs(work_dir: Path) -> None:
    project = work_dir / ECHO_MODEL
    with (
        serve_project(project, port=0, lmtp_port=None) as first,
        serve_project(project, port=0, lmtp_port=None) as second,
    ):
        logs = [first.cog.log_path, second.cog.log_path]
        ids = [served.cog.predict(MODEL_INFO)["id"] for served in (first, second)]
        with pytest.raises(CogServerError, match=f"127.0.0.1:{first.cog.port} is in use"):
            CogServer(project, port=first.cog.port).start()  # must not truncate first's log
        texts = [log.read_text() for log in logs]

    assert logs == [
        work_dir / "_logs" / f"{ECHO_MODEL}.cog-{served.cog.port}.log" for served in (first, second)
    ]
    for text in texts:
        assert text.count("echo model ready") == 1  # each has its setup, written once
    assert ids[0] in texts[0] and ids[0] not in texts[1]
    assert ids[1] in texts[1] and ids[1] not in texts[0]
