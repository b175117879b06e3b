"""Looking at schedules: the memory/bubble frontier (pareto) and pictures (render)."""
