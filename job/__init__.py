"""The in-job program: what a service's batch script runs inside its job.

`python -m aifb.job.run` (`run`) writes the recipe's files, fills in auto ports, starts the
program, checks readiness and reports the lifecycle back to the server (`report`); with the
server's say-so it runs telemetry sidecars beside the program (`sidecars`). It is its own part
because it runs on compute nodes, in every job: it imports the mesh, and the monitor and logger
agents for the sidecars, and nothing of the server it reports to.
"""
