"""The load engine: one LoadSpec (closed or open loop, a profile, bounds, an error budget) run
against one Workload on one event loop, with exact pacing, HDR histograms, live progress in
seconds and a mergeable LoadResult. Sweeps are sequences of engine runs (`sweep`)."""
