"""Analysis of finished runs: reports (IQM, bootstrap intervals, tables), figures, parameter
counts, and the published results the reports compare against (reference_results.toml)."""
