"""Run records (metrics.json), collection of runs, and rendering of tables into reports/."""
