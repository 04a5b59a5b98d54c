"""foldflow's read side: projection workers and the read models they keep
(executions, step history, listing indexes, correlation, lifecycle events),
and the queries that answer from them (streams.md, "Read models")."""

from .catalog import PROJECTIONS
from .queries import Queries
from .rebuild import Rebuilder
from .runner import Projector
from .status import projector_status
from .trim import trim_feeds

__all__ = ["PROJECTIONS", "Projector", "Queries", "Rebuilder", "projector_status", "trim_feeds"]
