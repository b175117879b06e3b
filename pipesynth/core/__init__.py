"""The model every other layer shares: problem, schedule, the pass rules, simulation and validation.

Nothing here knows about files, generators or solvers (docs/design.md section 6).
"""
