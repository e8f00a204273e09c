"""The search: budget files, the Optuna and Ray Tune drivers, Pareto-aware pruning, the CLI."""
