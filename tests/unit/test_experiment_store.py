"""Where experiments live: a record and its trials come back as they were stored; a request id is
unique per owner; unfinished experiments are found again; the owner's token is kept only while
an experiment runs; the database is the owner's alone; lists filter and page."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from aifb.experiment.listing import page
from aifb.experiment.model import (
    ConfigurationRun,
    ExperimentRecord,
    ExperimentState,
    SearchRun,
    Trial,
    TrialState,
)
from aifb.experiment.store import ExperimentStore
from aifb.mesh.errors import AlreadyExists, InvalidArgument

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ExperimentStore]:
    s = ExperimentStore(tmp_path / "home" / "experiments")
    yield s
    s.close()


def _study(name: str = "nginx-workers") -> dict[str, object]:
    # The store keeps the study's dict as given; it does not check it.
    return {"name": name, "description": "", "services": [], "workloads": []}


def _record(eid: str, *, owner: str = "alice", request_id: str = "", study: str = "nginx-workers",
            state: ExperimentState = ExperimentState.PENDING, create_time: float = 1.0,
            labels: dict[str, str] | None = None) -> ExperimentRecord:
    trials = tuple(Trial(n=n, configuration=n // 2, workload="http", level_kind="rate",
                         level=100.0 * (1 + n % 2)) for n in range(4))
    return ExperimentRecord(
        id=eid, owner=owner, study=_study(study), state=state, labels=labels or {},
        configurations=(ConfigurationRun(0), ConfigurationRun(1)), trials=trials,
        create_time=create_time, request_id=request_id, trace_id="t" * 32)


def test_a_record_and_its_trials_come_back_equal(store: ExperimentStore) -> None:
    record = _record("e1", request_id="req-1", labels={"team": "ml"})
    store.insert(record, token="secret")
    assert store.get("e1") == record
    assert store.by_request_id("alice", "req-1") == record
    assert store.get("missing") is None


def test_an_update_writes_the_head_and_the_given_trials(store: ExperimentStore) -> None:
    record = _record("e1")
    store.insert(record, token="secret")
    trial = record.trials[1].evolve(state=TrialState.SUCCEEDED, benchmark="benchmarks/b1",
                                    figures={"achieved_rate": 99.5}, slo_met=True,
                                    start_time=10.0, end_time=20.0)
    search = Trial(n=4, configuration=0, workload="http", level_kind="search", level=50.0,
                   search_step=1, state=TrialState.BENCHMARKING)
    record = (record.evolve(state=ExperimentState.RUNNING, start_time=5.0)
              .with_trial(trial).with_trial(search)
              .with_configuration(ConfigurationRun(0, service="services/s0"))
              .with_search(SearchRun(0, "http", 0, state={"start": 50.0})))
    store.update(record, trial, search)
    got = store.get("e1")
    assert got == record
    assert got is not None
    assert [t.state for t in got.trials] == [TrialState.PENDING, TrialState.SUCCEEDED,
                                             TrialState.PENDING, TrialState.PENDING,
                                             TrialState.BENCHMARKING]
    assert got.trials[1].figures == {"achieved_rate": 99.5}
    assert got.configurations[0].service == "services/s0"
    assert got.searches[0].state == {"start": 50.0}
    assert got.revision == record.revision == 6  # created, then five changes


def test_an_update_leaves_the_trials_it_is_not_given(store: ExperimentStore) -> None:
    record = _record("e1")
    store.insert(record, token="")
    changed = record.trials[0].evolve(state=TrialState.FAILED)
    store.update(record.with_trial(changed))  # the head only
    got = store.get("e1")
    assert got is not None
    assert got.trials[0].state is TrialState.PENDING


def test_a_request_id_is_unique_per_owner(store: ExperimentStore) -> None:
    store.insert(_record("e1", request_id="req-1"), token="")
    with pytest.raises(AlreadyExists):
        store.insert(_record("e2", request_id="req-1"), token="")
    assert store.get("e2") is None
    store.insert(_record("e3", owner="bob", request_id="req-1"), token="")
    store.insert(_record("e4", request_id=""), token="")
    store.insert(_record("e5", request_id=""), token="")  # no request id: no uniqueness
    assert [r.id for r in store.owned_by("alice")] == ["e1", "e4", "e5"]
    assert store.by_request_id("bob", "req-1") == _record("e3", owner="bob",
                                                           request_id="req-1")


def test_an_experiment_id_is_unique(store: ExperimentStore) -> None:
    store.insert(_record("e1"), token="a")
    with pytest.raises(AlreadyExists):
        store.insert(_record("e1", owner="bob"), token="b")
    assert store.token("e1") == "a"
    assert store.owned_by("bob") == []


def test_unfinished_lists_only_the_experiments_not_terminal(store: ExperimentStore) -> None:
    states = [ExperimentState.PENDING, ExperimentState.RUNNING, ExperimentState.SUCCEEDED,
              ExperimentState.FAILED, ExperimentState.CANCELLED]
    for i, state in enumerate(states):
        store.insert(_record(f"e{i}", state=state, create_time=10.0 - i), token="")
    assert [(r.id, r.state) for r in store.unfinished()] == [
        ("e1", ExperimentState.RUNNING), ("e0", ExperimentState.PENDING)]
    running = store.get("e1")
    assert running is not None
    store.update(running.evolve(state=ExperimentState.SUCCEEDED))
    assert [r.id for r in store.unfinished()] == ["e0"]


def test_the_token_is_kept_while_running_and_deleted_once_terminal(
        store: ExperimentStore) -> None:
    record = _record("e1")
    store.insert(record, token="secret")
    assert store.token("e1") == "secret"
    record = record.evolve(state=ExperimentState.RUNNING)
    store.update(record)
    assert store.token("e1") == "secret"
    record = record.evolve(state=ExperimentState.CANCELLED)
    store.update(record)
    assert store.token("e1") == ""
    store.insert(_record("e2"), token="")
    assert store.token("e2") == ""


def test_the_token_survives_a_reopened_store(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    first = ExperimentStore(root)
    first.insert(_record("e1", state=ExperimentState.RUNNING), token="secret")
    first.close()
    second = ExperimentStore(root)
    try:
        assert second.token("e1") == "secret"
        assert [r.id for r in second.unfinished()] == ["e1"]
    finally:
        second.close()


def test_the_database_and_its_folders_are_the_owners_alone(
        store: ExperimentStore, tmp_path: Path) -> None:
    store.insert(_record("e1"), token="secret")
    db = tmp_path / "home" / "experiments" / "experiments.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    for side in db.parent.glob("experiments.db-*"):  # the WAL's files
        assert stat.S_IMODE(side.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    run = store.run_dir("e1")
    assert run == db.parent / "e1"
    assert stat.S_IMODE(run.stat().st_mode) == 0o700


def _listed() -> list[ExperimentRecord]:
    running, done = ExperimentState.RUNNING, ExperimentState.SUCCEEDED
    return [_record("a", state=running, create_time=1.0),
            _record("b", state=done, create_time=2.0),
            _record("c", state=running, study="other", create_time=3.0),
            _record("d", state=running, create_time=4.0, labels={"team": "ml"}),
            _record("e", state=running, create_time=5.0),
            _record("f", state=done, create_time=6.0)]


def test_a_list_filters_by_state_and_study() -> None:
    records = _listed()
    got, token = page(records, page_size=0, token="", filter_text="state=RUNNING")
    assert ([r.id for r in got], token) == (["a", "c", "d", "e"], "")
    got, _ = page(records, page_size=0, token="", filter_text="study=nginx-workers")
    assert [r.id for r in got] == ["a", "b", "d", "e", "f"]
    got, _ = page(records, page_size=0, token="",
                  filter_text="state=experiment_state_running study=nginx-workers")
    assert [r.id for r in got] == ["a", "d", "e"]
    got, _ = page(records, page_size=0, token="", filter_text="label.team=ml")
    assert [r.id for r in got] == ["d"]


def test_a_filtered_list_pages_with_tokens_until_the_end() -> None:
    records = _listed()
    wanted = "state=RUNNING study=nginx-workers"
    first, token = page(records, page_size=2, token="", filter_text=wanted)
    assert [r.id for r in first] == ["a", "d"]
    assert token
    second, token = page(records, page_size=2, token=token, filter_text=wanted)
    assert ([r.id for r in second], token) == (["e"], "")


def test_a_page_token_is_bound_to_its_filter() -> None:
    records = _listed()
    _, token = page(records, page_size=1, token="", filter_text="state=RUNNING")
    with pytest.raises(InvalidArgument) as err:
        page(records, page_size=1, token=token, filter_text="state=SUCCEEDED")
    assert err.value.field == "page_token"


def test_an_unknown_state_or_filter_key_is_invalid_argument_naming_filter() -> None:
    for text in ("state=DONE", "owner=alice", "state"):
        with pytest.raises(InvalidArgument) as err:
            page(_listed(), page_size=0, token="", filter_text=text)
        assert err.value.field == "filter"


def test_a_stored_study_keeps_its_axes_in_the_order_written(store: ExperimentStore) -> None:
    """Axes not in alphabetical order: configuration n must be the same point after a read
    (sorting the stored JSON once renumbered them, and reports put figures on the wrong
    parameters)."""
    from aifb.experiment.expand import configurations
    from aifb.experiment.study import Study, load_study

    study = load_study("name: order\nservices:\n  - recipe: nginx\n    parameters:\n"
                       "      workers: [1, 2]\n      worker_connections: [16, 64]\n"
                       "workloads:\n  - workload: http\n    rates: [10]\n", file="o.yaml")
    written = [c.parameters for c in configurations(study)]
    assert written[1] == {"workers": "1", "worker_connections": "64"}
    record = ExperimentRecord(id="e0000000000a", owner="alice", study=study.to_dict())
    store.insert(record, "")
    back = store.get("e0000000000a")
    assert back is not None
    assert [c.parameters for c in configurations(Study.from_dict(back.study))] == written


def test_an_ended_experiments_token_is_gone_from_the_database_files(tmp_path: Path) -> None:
    store = ExperimentStore(tmp_path / "x")
    record = _record("e0000000000b")
    store.insert(record, "secret-token-0123456789")
    store.update(record.evolve(state=ExperimentState.SUCCEEDED))
    store.close()
    for path in (tmp_path / "x").iterdir():
        assert b"secret-token-0123456789" not in path.read_bytes(), path.name
