"""The build service: config -> plan -> execute (render | scan -> reduce) -> publish.

`config` validates the YAML, `resolve` checks it against the real models, `plan` keys typed work
items, `runner` runs one item on a warm model (render here, scan and reduce in `scan_items`),
`execute` runs many in process or on Ray actors, and `run` drives a whole build: one snapshot of
the atlas, a leased draft, reuse, execution, publish.
"""

from loupe.jobs.build.run import BuildPlan, Execution, make_plan, run_build

__all__ = ["BuildPlan", "Execution", "make_plan", "run_build"]
