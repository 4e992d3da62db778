"""Parsing of squeue/sacct/slurmrestd output recorded from the real SLURM 22.05 cluster, exit-code
decoding, error mapping, and the batching logic of both SLURM backends against injected fakes."""

from __future__ import annotations

import asyncio
import json
import shutil
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from aifb.mesh.errors import InvalidArgument, SchedulerRejected, SchedulerUnavailable
from aifb.server.schedulers import (
    LocalScheduler,
    SlurmCliScheduler,
    SlurmRestScheduler,
    detect_default_kind,
    make_scheduler,
)
from aifb.server.schedulers.slurm_cli import (
    classify_slurm_error,
    decode_wait_status,
    parse_sacct,
    parse_squeue,
)
from aifb.server.schedulers.slurm_rest import (
    classify_rest_error,
    job_properties_v0038,
    parse_job_v0038,
)
from tests.fixtures import job_spec

pytestmark = pytest.mark.unit
T = TypeVar("T")

# `squeue -h -t all -O JobID:\x1f,State:\x1f,Reason:\x1f,exit_code:\x1f,NodeList:\x1f`
SQUEUE_OUT = (
    "2\x1fCANCELLED\x1fNone\x1f15\x1fvm\x1f\n"
    "208\x1fCANCELLED\x1fJobHeldUser\x1f0\x1f\x1f\n"
    "3\x1fCOMPLETED\x1fNone\x1f0\x1fvm\x1f\n"
    "1\x1fFAILED\x1fNonZeroExitCode\x1f768\x1fvm\x1f\n"
    "207\x1fPENDING\x1fJobHeldUser\x1f0\x1f\x1f\n"
    "211\x1fRUNNING\x1fNone\x1f0\x1fvm\x1f\n"
)
# `sacct -c -n -P -j 1,2,3,209,210 --format=JobID,State,ExitCode,NodeList`
SACCT_OUT = "2|CANCELLED|0:0|vm\n1|FAILED|3:0|vm\n3|COMPLETED|0:0|vm\n209|FAILED|3:0|vm\n"
# two entries of `GET /slurm/v0.0.38/jobs` (most keys left out)
REST_JOBS: dict[str, Any] = {
    "meta": {"plugin": {"type": "openapi/v0.0.38"}},
    "errors": [],
    "jobs": [
        {"job_id": 209, "name": "rec", "job_state": "FAILED", "state_reason": "NonZeroExitCode",
         "exit_code": 768, "derived_exit_code": 0, "nodes": "vm", "partition": "debug"},
        {"job_id": 210, "name": "rec2", "job_state": "CANCELLED", "state_reason": "None",
         "exit_code": 15, "derived_exit_code": 0, "nodes": "vm", "partition": "debug"},
        {"job_id": 212, "name": "run", "job_state": "RUNNING", "state_reason": "None",
         "exit_code": 0, "nodes": "vm"},
    ],
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(0, (0, None)), (768, (3, None)), (256, (1, None)), (15, (None, 15)), (9, (None, 9)),
     (None, (None, None))],
)
def test_decode_wait_status_splits_exit_code_and_signal(
    raw: int | None, expected: tuple[int | None, int | None]
) -> None:
    assert decode_wait_status(raw) == expected


def test_parse_squeue_decodes_states_reasons_and_raw_exit_codes() -> None:
    jobs = parse_squeue(SQUEUE_OUT)
    assert jobs["1"].raw_state == "FAILED"
    assert (jobs["1"].reason, jobs["1"].exit_code, jobs["1"].signal) == ("NonZeroExitCode", 3, None)
    assert (jobs["2"].raw_state, jobs["2"].exit_code, jobs["2"].signal) == ("CANCELLED", None, 15)
    assert (jobs["3"].raw_state, jobs["3"].exit_code, jobs["3"].reason) == ("COMPLETED", 0, "")
    assert (jobs["207"].raw_state, jobs["207"].reason, jobs["207"].nodes) == (
        "PENDING", "JobHeldUser", "")
    assert jobs["207"].exit_code is None  # not ended: no exit code yet
    assert jobs["211"].nodes == "vm" and not jobs["211"].terminal


def test_parse_squeue_keeps_only_the_ids_asked_for() -> None:
    assert set(parse_squeue(SQUEUE_OUT, ["1", "211", "999"])) == {"1", "211"}


def test_parse_sacct_reads_exit_code_pairs() -> None:
    jobs = parse_sacct(SACCT_OUT, ["1", "2", "209"])
    assert set(jobs) == {"1", "2", "209"}
    assert (jobs["209"].raw_state, jobs["209"].exit_code) == ("FAILED", 3)
    assert jobs["2"].raw_state == "CANCELLED" and jobs["2"].terminal
    assert parse_sacct("5|TIMEOUT|0:15|vm\n")["5"].signal == 15


def test_parse_rest_job_decodes_raw_exit_code() -> None:
    failed, cancelled, running = (parse_job_v0038(j) for j in REST_JOBS["jobs"])
    assert (failed.job_id, failed.raw_state, failed.exit_code) == ("209", "FAILED", 3)
    assert (cancelled.raw_state, cancelled.signal, cancelled.reason) == ("CANCELLED", 15, "")
    assert (running.raw_state, running.exit_code, running.nodes) == ("RUNNING", None, "vm")


@pytest.mark.parametrize(
    "stderr",
    [
        "sbatch: error: Memory specification can not be satisfied\n"
        "sbatch: error: Batch job submission failed: Requested node configuration is not available",
        "sbatch: error: Invalid generic resource (gres) specification",
        "sbatch: error: Batch job submission failed: More processors requested than permitted",
        "sbatch: error: invalid partition specified: nosuch\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified",
        "sbatch: error: Invalid --time specification",
    ],
)
def test_sbatch_refusals_map_to_scheduler_rejected_with_slurms_message(stderr: str) -> None:
    error = classify_slurm_error(stderr, tool="sbatch")
    assert isinstance(error, SchedulerRejected)
    last = stderr.splitlines()[-1].split("error: ")[-1]
    last = last.removeprefix("Batch job submission failed: ")
    assert last in error.message
    assert "sbatch: error:" not in error.message


def test_controller_down_maps_to_scheduler_unavailable() -> None:
    error = classify_slurm_error(
        "sbatch: error: Batch job submission failed: Unable to contact slurm controller "
        "(connect failure)", tool="sbatch")
    assert isinstance(error, SchedulerUnavailable)


@pytest.mark.parametrize(
    ("status", "body", "expected", "text"),
    [
        (400, {"errors": [{"error_code": 9001, "error": "Failure during parsing"}]},
         SchedulerRejected, "Failure during parsing"),
        (500, {"errors": [{"error_code": 2014,
                           "error": "Requested node configuration is not available"}]},
         SchedulerRejected, "Requested node configuration is not available"),
        (500, {"errors": [{"error_code": 2000, "error": "Invalid partition name specified"}]},
         SchedulerRejected, "Invalid partition name specified"),
        (500, {"errors": [{"error_code": 5005,
                           "error": "Zero Bytes were transmitted or received"}]},
         SchedulerUnavailable, "Zero Bytes"),
        (500, {"errors": [{"description": "Failed while looking for jobs", "error_number": -1,
                           "error": "Unspecified error", "source": "slurm_load_jobs"}]},
         SchedulerUnavailable, "Failed while looking for jobs"),
        (401, None, SchedulerUnavailable, "Authentication failure"),
    ],
)
def test_rest_errors_map_to_domain_errors_with_the_daemons_message(
    status: int, body: Any, expected: type[Exception], text: str
) -> None:
    error = classify_rest_error(status, body, "Authentication failure", action="submit the job")
    assert type(error) is expected
    assert text in error.message


def test_rest_job_properties_come_from_the_resource_spec(tmp_path: Path) -> None:
    spec = job_spec(tmp_path, name="svc", cpus=2, memory_mib=300, time_limit_minutes=5,
                    partition="debug", gpus=1, environment={"FOO": "bar"})
    job = job_properties_v0038(spec)
    assert job["name"] == "svc" and job["partition"] == "debug"
    assert (job["cpus_per_task"], job["memory_per_node"], job["time_limit"]) == (2, 300, 5)
    assert job["gres"] == "gpu:1" and job["nodes"] == [1, 1]
    assert job["current_working_directory"] == str(tmp_path)
    assert job["environment"]["FOO"] == "bar" and "PATH" in job["environment"]
    assert "account" not in job


def _rest_fake(seen: list[str], serve: tuple[str, ...] = ("v0.0.38",)) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        version = request.url.path.split("/")[2]
        if version not in serve:
            return httpx.Response(404, text="Unable find requested URL.")
        if request.url.path.endswith("/ping"):
            return httpx.Response(200, json={"errors": [], "pings": [{"ping": "UP"}]})
        if request.url.path.endswith("/jobs"):
            return httpx.Response(200, json=REST_JOBS)
        if request.method == "DELETE":
            return httpx.Response(500, json={"errors": [{
                "description": "unable to kill JobId=99 with signal 9: Invalid job id specified",
                "error_number": 2017, "error": "Invalid job id specified"}]})
        body = json.loads(request.content)
        assert isinstance(body["job"]["environment"], dict)
        return httpx.Response(200, json={"errors": [], "job_id": 77, "step_id": "BATCH"})
    return httpx.MockTransport(handler)


def test_rest_picks_the_newest_served_version_and_queries_with_one_request(tmp_path: Path) -> None:
    seen: list[str] = []

    async def scenario() -> tuple[str, dict[str, Any], str]:
        sched = SlurmRestScheduler("http://slurm.example:6820", token="jwt",
                                   transport=_rest_fake(seen, serve=("v0.0.37",)))
        try:
            version = await sched.ping()
            seen.clear()
            statuses = await sched.query(["209", "210", "999"])
            job_id = await sched.submit(job_spec(tmp_path), "#!/bin/bash\ntrue\n")
            await sched.cancel("99")  # unknown to slurmctld: nothing to cancel, no error
            return version, dict(statuses), job_id
        finally:
            await sched.close()

    version, statuses, job_id = run(scenario())
    assert version == "v0.0.37"
    assert set(statuses) == {"209", "210"}
    assert seen[0] == "GET /slurm/v0.0.37/jobs"
    assert job_id == "77"


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_cli_query_uses_one_squeue_call_and_one_sacct_call_for_purged_jobs(
    tmp_path: Path,
) -> None:
    (tmp_path / "squeue.out").write_text(SQUEUE_OUT)
    (tmp_path / "sacct.out").write_text(SACCT_OUT)
    _fake_tool(tmp_path, "squeue", f"cat {tmp_path}/squeue.out")
    _fake_tool(tmp_path, "sacct", f'echo "$@" >> {tmp_path}/sacct.args; cat {tmp_path}/sacct.out')
    sched = SlurmCliScheduler(bin_dir=str(tmp_path))
    statuses = run(sched.query(["1", "211", "209", "4242"]))
    assert set(statuses) == {"1", "211", "209"}
    assert sched.calls == {"squeue": 1, "sacct": 1}
    assert "-j 209,4242" in (tmp_path / "sacct.args").read_text()
    run(sched.query(["1", "209"]))  # 209 ended: remembered, no second sacct
    assert sched.calls == {"squeue": 2, "sacct": 1}


def test_cli_tool_that_hangs_gives_scheduler_unavailable(tmp_path: Path) -> None:
    _fake_tool(tmp_path, "squeue", "exec sleep 30")
    sched = SlurmCliScheduler(bin_dir=str(tmp_path), timeout=0.3)
    with pytest.raises(SchedulerUnavailable, match="did not answer"):
        run(sched.query(["1"]))


def test_cli_cancel_refuses_ids_that_are_not_slurm_job_ids() -> None:
    with pytest.raises(InvalidArgument):
        run(SlurmCliScheduler(bin_dir="/nonexistent").cancel("-u root"))


def test_make_scheduler_names_unknown_kinds_and_options(tmp_path: Path) -> None:
    assert isinstance(make_scheduler("local", state_dir=tmp_path), LocalScheduler)
    with pytest.raises(InvalidArgument, match="valid: local, slurm, slurmrest"):
        make_scheduler("pbs")
    with pytest.raises(InvalidArgument, match="kill_wait_seconds"):
        make_scheduler("local", kill_after=3)
    with pytest.raises(InvalidArgument, match="needs option"):
        make_scheduler("slurmrest")


@pytest.mark.parametrize(
    ("tools", "expected"),
    [({"sbatch": "true", "sinfo": "echo debug"}, "slurm"),
     ({"sbatch": "true", "sinfo": f"exec {shutil.which('sleep')} 30"}, "local"),  # hangs
     ({"sbatch": "true", "sinfo": "exit 1"}, "local"),  # no controller
     ({"sinfo": "echo debug"}, "local")],  # no sbatch
    ids=["answers", "hangs", "fails", "no-sbatch"],
)
def test_detect_default_kind_wants_sbatch_and_an_answering_sinfo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tools: dict[str, str], expected: str
) -> None:
    for name, body in tools.items():
        _fake_tool(tmp_path, name, body)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_default_kind(timeout=0.5) == expected
