"""``lstm-bench``: the project's own load-testing client (never imported by the server).

from service.loadtest import LoadSpec, run_load
result = run_load(LoadSpec(protocol="v2-binary", concurrency=8, duration_s=5))
"""

from service.loadtest.runner import run_load, run_sweep
from service.loadtest.spec import LoadSpec, SpecError
from service.loadtest.stats import LoadResult

__all__ = ["LoadResult", "LoadSpec", "SpecError", "run_load", "run_sweep"]
