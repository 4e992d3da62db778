"""Who may call what: the rules every servicer applies on top of authentication (see
docs/security.md, which names the test that checks each line).

- A *user* token (issued by `aifb tokens create`, or the operator's own in ~/.aifb/token) sees
  and controls only what that user owns.
- A *job* token (AIFB_REPORT_TOKEN, one per service) may only report its own service's events
  and push telemetry labelled with its own service; every other method refuses it.
- The *operator* is the account that runs the component (its process owner). Node-wide views
  (a monitor's snapshots, a logger's sources, the collector's counters) are the operator's only:
  they mix every user's jobs.
"""

from __future__ import annotations

import functools
import getpass
from collections.abc import Iterable

from aifb.mesh.auth import Principal, current_principal
from aifb.mesh.errors import PermissionDenied

__all__ = ["caller", "job_may_push", "operator_caller", "operator_name", "user_caller"]

JOB_TOKEN_SCOPE = ("a job's token may only report its own service's events and push telemetry "
                   "labelled with its own service")


@functools.cache
def operator_name() -> str:
    """The account running this process: it owns the node-wide views."""
    return getpass.getuser()


def caller() -> Principal:
    return current_principal.get()


def user_caller() -> Principal:
    """The calling user; a job's token is refused."""
    principal = current_principal.get()
    if principal.is_job:
        raise PermissionDenied(JOB_TOKEN_SCOPE)
    return principal


def operator_caller(what: str) -> Principal:
    """The caller, who must be the operator: `what` names the view for the refusal."""
    principal = user_caller()
    if principal.user != operator_name():
        raise PermissionDenied(f"{what} shows every user's jobs on this node: only "
                               f"{operator_name()!r}, who runs it, may read it")
    return principal


def job_may_push(principal: Principal | None,
                 label_sets: Iterable[Iterable[tuple[str, str]]]) -> None:
    """A job's token pushes only series and streams of its own service (a `service` label,
    when present, must name it); users' pushes are theirs whatever the labels say, and are
    read back by them alone."""
    if principal is None or not principal.is_job:
        return
    own = {principal.service, f"services/{principal.service}"}
    for labels in label_sets:
        for key, value in labels:
            if key == "service" and value not in own:
                raise PermissionDenied(f"{JOB_TOKEN_SCOPE}: got service={value!r}")
