"""Reports: aggregated figures for dashboards (segment sizes, consent rates, reach, overlap)."""
