"""The pipeline's stages, one module each: teacher, shadows, compress, attack, search, report,
compare, cache. Each is `run(ctx, ...)`: `ctx` is the run context (`pipeline.context.RunContext`)
the entry point builds once. Stages are peers: none imports another (tests/unit/test_imports.py);
`pipeline.flow` hands one stage's result to the next, and `pipeline.__main__` maps `stage=NAME`
to it."""
