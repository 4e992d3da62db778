"""Filtering and keyset paging of experiment lists (ListExperiments' `filter` and `page_token`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aifb.experiment.model import ExperimentRecord, ExperimentState
from aifb.mesh import paging
from aifb.mesh.paging import keyset_page

__all__ = ["page", "parse_filter"]

DEFAULT_PAGE_SIZE = 100
Check = Callable[[ExperimentRecord], bool]


def parse_filter(text: str) -> Check:
    """'state=RUNNING study=nginx-workers label.team=ml' -> predicate (all terms hold)."""
    return paging.parse_filter(text, {
        "state": paging.enum_term(ExperimentState, "EXPERIMENT_STATE_", lambda r: r.state),
        "study": lambda v: lambda r: r.study.get("name") == v,
    }, labels=lambda r: r.labels)


def page(records: Sequence[ExperimentRecord], *, page_size: int, token: str, filter_text: str
         ) -> tuple[list[ExperimentRecord], str]:
    """One page in (create_time, id) order and the token of the next ('' at the end)."""
    return keyset_page(records, size=page_size or DEFAULT_PAGE_SIZE, token=token,
                       filter_text=filter_text, accept=parse_filter(filter_text))
