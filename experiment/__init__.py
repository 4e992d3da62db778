"""aifb.experiment: the ExperimentService. A study (YAML, `study`) expands into configurations x
workload levels x repeats (`expand`); each configuration is deployed once through the
ServerService, benchmarked at every level through the BenchmarkService (both over gRPC, like any
client), and torn down; repeats give each figure a mean and a confidence interval (`stats`), a
rate search finds the highest rate that meets an SLO (`search`), and one report compares them."""
