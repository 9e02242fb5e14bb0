"""The build service: config -> plan -> execute (render | scan -> reduce) -> publish.

`config` validates the YAML, `resolve` checks it against the real models, `plan` keys typed work
items (`scan_plan` adds the scan shards and reduces), `shared_state` saves what every worker
reads (listing, receptive fields), `runner` runs one item on a warm model (renders itself, scans
and reduces through `scan_stage`), `execute` runs many in process or on Ray actors, and `run`
drives a whole build: one snapshot of the atlas, a leased draft, reuse, execution, publish.
"""

from loupe.jobs.build.run import BuildPlan, Execution, make_plan, run_build

__all__ = ["BuildPlan", "Execution", "make_plan", "run_build"]
