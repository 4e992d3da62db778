"""Running one experiment: deploy each configuration, run its trials, tear it down.

Configurations run in parallel up to `limits.parallel_deployments`; within one, the deployment
is made once (CreateService, idempotent by a request id derived from the experiment and the
configuration) and reused for all its trials, repeat by repeat, workload by workload, level by
level; a rate search asks `RateSearch` for each next rate. Every state change is committed
(`Commit`) before the next step, so a restarted service picks the experiment up where it was:
- a trial that ended is never run again;
- a trial whose benchmark still runs is watched again, one whose benchmark ended is read, and
  one whose benchmark was lost (the benchmark service restarted) runs again as a new attempt;
- the configuration's service is found again by its request id (no second deployment), and a
  deployment is deleted once its trials are done, on failure, and on cancel.
The calls go through `Remote` with the owner's token: every ownership rule of the server and
the benchmark service applies to the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aifb.experiment.expand import Configuration
from aifb.experiment.figures import figures_from_report
from aifb.experiment.model import (
    ConfigurationRun,
    ExperimentRecord,
    SearchRun,
    Trial,
    TrialState,
)
from aifb.experiment.plan import Plan, Step
from aifb.experiment.remote import Remote
from aifb.experiment.search import RateSearch
from aifb.experiment.usage import UsageProbe, per_unit
from aifb.mesh.errors import AifbError, DeadlineExceeded, NotFound
from aifb.v1 import client_pb2 as C
from aifb.v1 import server_pb2 as S

__all__ = ["Commit", "ExperimentRun", "Progress"]

log = logging.getLogger(__name__)

# Apply a change to the experiment's record and store it (with the trials it names) before
# returning: the one way the runner changes anything.
Commit = Callable[[Callable[[ExperimentRecord], ExperimentRecord], Sequence[Trial]],
                  Awaitable[ExperimentRecord]]
Progress = Callable[[str, C.ProgressSample], None]

_LOG_TAIL_BYTES = 4096
_TERMINAL_SERVICE = (S.SERVICE_STATE_STOPPED, S.SERVICE_STATE_FAILED)
_TERMINAL_BENCH = (C.BENCHMARK_STATE_SUCCEEDED, C.BENCHMARK_STATE_FAILED,
                   C.BENCHMARK_STATE_CANCELLED)


_MAX_ATTEMPTS = 3
_DELETE_ATTEMPTS = 4  # over about 14 s
# How the benchmark service marks a run it lost: stopped mid-run (found at its restart), or
# cancelled because it was shutting down.
_LOST = ("stopped while the run was in flight", "is shutting down")


def _lost(state: int, message: str) -> bool:
    return (state in (C.BENCHMARK_STATE_FAILED, C.BENCHMARK_STATE_CANCELLED)
            and any(mark in message for mark in _LOST))


# A search's rate is met only when the run also sent it: a load generator that cannot keep
# up with a rate measures the target at a lower one (MLPerf asks the same of its runs).
_ACHIEVED_SHARE = 0.95


def _met(trial: Trial) -> bool:
    """Whether a search's trial met its SLOs at the rate it was asked for."""
    return (bool(trial.slo_met)
            and trial.figures.get("achieved_rate", 0.0) >= _ACHIEVED_SHARE * trial.level)


class Aborted(Exception):
    """on_failure: abort, and something failed."""


@dataclass
class _Budget:
    deadline: float  # monotonic; inf when the study sets none

    def spent(self) -> bool:
        return time.monotonic() > self.deadline


class ExperimentRun:
    def __init__(self, record: ExperimentRecord, plan: Plan, remote: Remote, token: str,
                 commit: Commit, progress: Progress) -> None:
        self.id = record.id
        self.record = record
        self.plan = plan
        self.remote = remote
        self.token = token
        self._commit = commit
        self._progress = progress
        budget = plan.limits.budget_s
        started = record.start_time or time.time()
        self._budget = _Budget(time.monotonic() + (budget - (time.time() - started))
                               if budget else float("inf"))
        self.aborted = self._failed_before() if plan.abort_on_failure else ""

    def _failed_before(self) -> str:
        """A failure a previous process recorded: on_failure: abort holds across a restart."""
        for run in self.record.configurations:
            if run.failure:
                return (f"configuration {run.index} failed to deploy: "
                        f"{run.failure.splitlines()[0]}")
        for t in self.record.trials:
            if t.level_kind != "search" and TrialState.FAILED in (t.state, t.ended_as):
                return f"trial {t.n} failed: {t.state_message}"
        return ""

    # -- records ---------------------------------------------------------------------------
    async def _set_trial(self, trial: Trial) -> Trial:
        self.record = await self._commit(lambda r: r.with_trial(trial), [trial])
        return trial

    async def _set_configuration(self, run: ConfigurationRun) -> None:
        self.record = await self._commit(lambda r: r.with_configuration(run), [])

    async def _set_search(self, run: SearchRun) -> None:
        self.record = await self._commit(lambda r: r.with_search(run), [])

    def _trial(self, n: int) -> Trial:
        return self.record.trials[n]

    # -- the whole experiment ----------------------------------------------------------------
    async def run(self) -> None:
        """Every configuration, up to `parallel_deployments` at once. Raises Aborted when a
        failure stopped it (on_failure: abort); the caller sets the experiment's state."""
        slots = asyncio.Semaphore(self.plan.limits.parallel_deployments)

        async def one(config: Configuration) -> None:
            async with slots:
                if self.aborted and not self.record.configurations[config.index].service:
                    await self._skip_rest(config, "the experiment was aborted: " + self.aborted)
                elif self._budget.spent() and not self.record.configurations[config.index].service:
                    await self._skip_rest(config, "the experiment's time budget was spent "
                                                  "before this configuration's turn")
                else:
                    await self._configuration(config)

        tasks = [asyncio.create_task(one(c), name=f"experiment {self.id} config {c.index}")
                 for c in self.plan.configurations]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.aborted:
            for trial in list(self.record.trials):  # configurations that never got a turn
                if not trial.finished:
                    await self._set_trial(trial.evolve(
                        state=TrialState.SKIPPED, end_time=time.time(),
                        state_message="the experiment was aborted: " + self.aborted))
            raise Aborted(self.aborted)

    async def _configuration(self, config: Configuration) -> None:
        run = self.record.configurations[config.index]
        if run.torn_down and self._done(config):
            await self._restore_ended(config)
            return
        if self._done(config):  # trials ended before a crash, teardown did not: finish it
            await self._teardown(run)
            return
        if run.failure:
            await self._skip_rest(config, f"configuration {config.index} failed to deploy")
            await self._teardown(run)
            return
        if self.aborted:  # deployed before a restart, aborted since: delete it
            await self._skip_rest(config, "the experiment was aborted: " + self.aborted)
            await self._teardown(run)
            return
        first = self._next_pending(config)
        try:
            if first is not None and first.state is TrialState.PENDING:
                await self._set_trial(first.evolve(state=TrialState.DEPLOYING,
                                                   start_time=first.start_time or time.time()))
            service = await self._deploy(config)
        except AifbError as exc:
            run = self.record.configurations[config.index]
            failure = f"{exc}{await self._log_tail(run.service)}"
            await self._set_configuration(run.evolve(failure=failure))
            await self._skip_rest(config, f"configuration {config.index} failed to deploy: "
                                          f"{exc}")
            await self._teardown(self.record.configurations[config.index])
            self._fail(f"configuration {config.index} failed to deploy: {exc}")
            return
        last: Trial | None = None
        for step in self.plan.steps(config.index):
            if self.aborted or self._budget.spent():
                break
            if step.search is not None:
                last = await self._search(service, step) or last
            else:
                last = await self._step(service, step) or last
        if self.aborted or self._budget.spent():
            reason = ("the experiment was aborted: " + self.aborted if self.aborted
                      else "the experiment's time budget was spent")
            await self._skip_rest(config, reason)
        await self._teardown(self.record.configurations[config.index], last)

    def _done(self, config: Configuration) -> bool:
        return (all(t.finished for t in self.record.trials
                    if t.configuration == config.index)
                and all(s.done for s in self.record.searches
                        if s.configuration == config.index)
                and self._searches_started(config))

    def _searches_started(self, config: Configuration) -> bool:
        have = {s.key for s in self.record.searches}
        return all(step.search_key in have for step in self.plan.steps(config.index)
                   if step.search is not None)

    def _next_pending(self, config: Configuration) -> Trial | None:
        return next((t for t in self.record.trials
                     if t.configuration == config.index and not t.finished), None)

    async def _skip_rest(self, config: Configuration, reason: str) -> None:
        for trial in list(self.record.trials):
            if trial.configuration == config.index and not trial.finished:
                await self._set_trial(trial.evolve(state=TrialState.SKIPPED,
                                                   state_message=reason, end_time=time.time()))

    def _fail(self, reason: str) -> None:
        if self.plan.abort_on_failure and not self.aborted:
            self.aborted = reason

    # -- deployments -----------------------------------------------------------------------
    async def _deploy(self, config: Configuration) -> str:
        """services/<id>, READY. CreateService is idempotent by its request id: after a crash
        it answers with the service created before, never a second one."""
        run = self.record.configurations[config.index]
        created: S.CreateServiceResponse = await self.remote.call(
            self.remote.server.CreateService, S.CreateServiceRequest(
                recipe=config.recipe, parameters=config.parameters,
                resources=self.plan.resources(config),
                labels={"experiment": self.id, "configuration": str(config.index)},
                request_id=f"{self.id}-c{config.index}"), self.token)
        name = created.service.name
        if run.service != name:
            await self._set_configuration(run.evolve(service=name))
        deadline = time.monotonic() + self.plan.limits.deploy_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{name} was not READY within "
                                       f"{self.plan.limits.deploy_timeout_s:g} s")
            try:
                async with asyncio.timeout(remaining):
                    async for msg in self.remote.stream(self.remote.server.WatchService,
                                                        S.WatchServiceRequest(name=name),
                                                        self.token):
                        svc = msg.service
                        if svc.state == S.SERVICE_STATE_READY:
                            return str(name)
                        if svc.state in _TERMINAL_SERVICE or svc.state == S.SERVICE_STATE_STOPPING:
                            state = S.ServiceState.Name(svc.state).removeprefix("SERVICE_STATE_")
                            raise NotFound(f"{name} ended {state} before it was READY"
                                           + (f": {svc.state_message}" if svc.state_message
                                              else ""))
            except TimeoutError:
                continue  # the deadline check above says so

    async def _log_tail(self, service: str) -> str:
        if not service:
            return ""
        with contextlib.suppress(AifbError):
            logs: S.GetServiceLogsResponse = await self.remote.call(
                self.remote.server.GetServiceLogs,
                S.GetServiceLogsRequest(name=service, tail_bytes=_LOG_TAIL_BYTES), self.token)
            text = (logs.stdout + logs.stderr).strip()
            if text:
                return f"\n--- the service's last output ---\n{text}"
        return ""

    async def teardown(self, run: ConfigurationRun) -> None:
        """Delete the configuration's deployment (cancel, abort, failure)."""
        await self._teardown(run)

    async def _teardown(self, run: ConfigurationRun, last: Trial | None = None) -> None:
        """Delete the deployment; the configuration's last trial shows TEARING_DOWN meanwhile
        (remembering how it ended) and takes its end state back once the deletion is done."""
        if run.torn_down:
            await self._restore_ended(self.plan.configurations[run.index])
            return
        if last is not None and self._trial(last.n).state.terminal:
            ended = self._trial(last.n)
            await self._set_trial(ended.evolve(state=TrialState.TEARING_DOWN,
                                               ended_as=ended.state.value))
        if run.service:
            for attempt in range(_DELETE_ATTEMPTS):
                try:
                    await self.remote.call(self.remote.server.DeleteService,
                                           S.DeleteServiceRequest(name=run.service), self.token)
                    break
                except NotFound:
                    break  # already gone (deleted by hand, or never fully created)
                except AifbError as exc:
                    log.warning("experiment %s: could not delete %s (attempt %d): %s",
                                self.id, run.service, attempt + 1, exc)
                    if attempt + 1 == _DELETE_ATTEMPTS:
                        raise  # the experiment fails; its wind-down tries once more
                    await asyncio.sleep(2.0 * 2 ** attempt)
        await self._set_configuration(self.record.configurations[run.index].evolve(
            torn_down=True))
        await self._restore_ended(self.plan.configurations[run.index])

    async def _restore_ended(self, config: Configuration) -> None:
        for trial in list(self.record.trials):
            if trial.configuration == config.index and trial.state is TrialState.TEARING_DOWN:
                await self._set_trial(trial.evolve(state=TrialState(trial.ended_as),
                                                   ended_as=""))

    # -- trials ----------------------------------------------------------------------------
    async def _step(self, service: str, step: Step) -> Trial | None:
        """The fixed-level trials of one step (all repeats of one level)."""
        trial = self._trial(step.trial)
        if trial.finished:
            return None
        return await self._run_trial(service, trial, step)

    async def _search(self, service: str, step: Step) -> Trial | None:
        assert step.search is not None
        key = step.search_key
        found = next((s for s in self.record.searches if s.key == key), None)
        if found is None:
            search = step.search()
            found = SearchRun(*key, state=search.to_dict())
            await self._set_search(found)
        if found.done:
            return None
        search = RateSearch.from_dict(found.state)
        # A trial that ended after the search's last stored state (a crash between the two
        # commits) is recorded now, in order, instead of being run again.
        for done in sorted((t for t in self.record.trials
                            if (t.configuration, t.workload, t.repeat) == key
                            and t.level_kind == "search" and t.finished
                            and t.search_step > len(search.trials)),
                           key=lambda t: t.search_step):
            if search.next_rate() == done.level:
                search.record(done.level, _met(done))
        last: Trial | None = None
        # A trial of this search left unfinished by a crash: finish it first.
        pending = [t for t in self.record.trials if (t.configuration, t.workload, t.repeat) == key
                   and t.level_kind == "search" and not t.finished]
        while True:
            if self.aborted or self._budget.spent():
                return last
            if pending:
                trial = pending.pop(0)
            else:
                rate = search.next_rate()
                if rate is None:
                    break
                trial = Trial(n=len(self.record.trials), configuration=key[0],
                              workload=key[1], level_kind="search", level=rate, repeat=key[2],
                              search_step=len(search.trials) + 1)
                await self._set_trial(trial)
            trial = await self._run_trial(service, trial, step, search=True)
            last = trial
            if trial.state is TrialState.CANCELLED:
                return last
            search.record(trial.level, _met(trial))
            found = found.evolve(state=search.to_dict())
            await self._set_search(found)
        result = search.result()
        await self._set_search(found.evolve(
            state=search.to_dict(), best_rate=result.best_rate, failed_rate=result.failed_rate,
            converged=result.converged, reason=result.reason, done=True))
        return last

    async def _run_trial(self, service: str, trial: Trial, step: Step, *,
                         search: bool = False) -> Trial:
        trial = await self._set_trial(trial.evolve(
            state=TrialState.BENCHMARKING, start_time=trial.start_time or time.time()))
        probe = UsageProbe(self.remote, service)
        sampling = asyncio.create_task(probe.run(), name=f"usage {service}")
        try:
            state, message, bench = await self._benchmark(service, trial, step)
            await probe.sample()  # the last value of the window
            trial = self._trial(trial.n)
            figures, slo_met, samples = await self._figures(bench)
            figures.update(per_unit(probe.figures(), figures,
                                    self.plan.configurations[trial.configuration]))
        except AifbError as exc:
            trial = self._trial(trial.n)
            state, message, figures, slo_met = C.BENCHMARK_STATE_FAILED, str(exc), {}, False
            samples = ""
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        final = (TrialState.SUCCEEDED if state == C.BENCHMARK_STATE_SUCCEEDED
                 else TrialState.CANCELLED if state == C.BENCHMARK_STATE_CANCELLED
                 else TrialState.FAILED)
        trial = await self._set_trial(trial.evolve(
            state=final, state_message=message, figures=figures, samples=samples,
            slo_met=slo_met if final is TrialState.SUCCEEDED else False, end_time=time.time()))
        if final is TrialState.FAILED and not search:
            self._fail(f"trial {trial.n} failed: {message}")
        return trial

    async def _benchmark(self, service: str, trial: Trial, step: Step
                         ) -> tuple[int, str, str]:
        """Run (or pick up again) the trial's benchmark: its final state, message and name. A
        benchmark lost to a restart of the benchmark service runs again, as a new attempt."""
        while True:
            if trial.benchmark:
                try:
                    got: C.GetBenchmarkResponse = await self.remote.call(
                        self.remote.bench.GetBenchmark,
                        C.GetBenchmarkRequest(name=trial.benchmark), self.token)
                    outcome = await self._follow(trial, got.benchmark)
                    if not _lost(*outcome[:2]) or trial.attempt + 1 >= _MAX_ATTEMPTS:
                        return outcome
                except NotFound:
                    pass
                trial = await self._set_trial(trial.evolve(attempt=trial.attempt + 1,
                                                           benchmark=""))
                await asyncio.sleep(1.0)  # the benchmark service may be restarting
            request = self.plan.benchmark_request(step, trial, service)
            request.labels.update({"experiment": self.id, "trial": str(trial.n)})
            request.request_id = f"{self.id}-t{trial.n}-a{trial.attempt}"
            created: C.CreateBenchmarkResponse = await self.remote.call(
                self.remote.bench.CreateBenchmark, request, self.token)
            trial = await self._set_trial(trial.evolve(benchmark=created.benchmark.name))

    async def _follow(self, trial: Trial, bench: C.Benchmark) -> tuple[int, str, str]:
        name = bench.name
        if bench.state in _TERMINAL_BENCH:
            return bench.state, bench.state_message, name
        trial_name = f"{self.record.name}/trials/{trial.n}"
        timeout = self.plan.trial_timeout_s(trial)
        try:
            async with asyncio.timeout(timeout):
                while True:  # a stream that ends before the benchmark does is opened again
                    async for msg in self.remote.stream(self.remote.bench.WatchBenchmark,
                                                        C.WatchBenchmarkRequest(name=name),
                                                        self.token):
                        if msg.HasField("progress"):
                            self._progress(trial_name, msg.progress)
                        if msg.benchmark.state in _TERMINAL_BENCH:
                            return (msg.benchmark.state, msg.benchmark.state_message, name)
                    got: C.GetBenchmarkResponse = await self.remote.call(
                        self.remote.bench.GetBenchmark, C.GetBenchmarkRequest(name=name),
                        self.token)
                    if got.benchmark.state in _TERMINAL_BENCH:
                        return got.benchmark.state, got.benchmark.state_message, name
                    await asyncio.sleep(1.0)
        except TimeoutError:
            await self.cancel_benchmark(name)
            return (C.BENCHMARK_STATE_FAILED,
                    f"the benchmark did not end within the trial timeout ({timeout:g} s)", name)

    async def cancel_benchmark(self, name: str) -> None:
        with contextlib.suppress(AifbError):
            await self.remote.call(self.remote.bench.CancelBenchmark,
                                   C.CancelBenchmarkRequest(name=name), self.token)

    async def _figures(self, bench: str) -> tuple[dict[str, float], bool, str]:
        """The run's figures and SLO verdict, and where its per-request rows are (when the
        workload recorded them: `load.record_samples`)."""
        report: C.GetBenchmarkReportResponse = await self.remote.call(
            self.remote.bench.GetBenchmarkReport,
            C.GetBenchmarkReportRequest(name=bench, format=C.REPORT_FORMAT_JSON), self.token)
        doc: dict[str, Any] = json.loads(report.content)
        figures, met = figures_from_report(doc)
        rows = doc.get("samples") or {}
        samples = (f"{report.directory.rstrip('/')}/{rows['file']}"
                   if report.directory and rows.get("file") else "")
        return figures, met, samples
