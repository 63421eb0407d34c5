"""Analysis of tracked runs: Pareto maths (`pareto`), the train-less frontier (`frontier`),
bootstrap intervals (`intervals`), plots (`plots`), per-example audit scores (`audit_scores`)
and the audit of a released set of versions (`set_audit`)."""
