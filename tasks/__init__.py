"""Prefect tasks: thin wrappers over `odedit` functions. Retries are declared here where a
retry can help (file I/O, registry calls) and nowhere else (a diverged optimisation would
diverge again)."""
